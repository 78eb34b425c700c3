// The only pybind11 file: argument conversion, GIL release, docstrings. No store logic here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <optional>
#include <string>

#include "fastps/check.h"
#include "fastps/config.h"
#include "fastps/device.h"
#include "fastps/learner.h"
#include "fastps/probe.h"
#include "fastps/store.h"
#include "fastps/transfer.h"

namespace py = pybind11;
using fastps::DType;
using fastps::Learner;
using fastps::Mode;
using fastps::StepConfig;
using fastps::StepContext;
using fastps::StepKind;
using fastps::Store;
using fastps::StoreConfig;

namespace {

constexpr int kNpyHalf = 23;
constexpr int kNpyFloat = 11;

bool native_order(const py::dtype& dt) { return dt.byteorder() != '>'; }

std::string dtype_str(const py::dtype& dt) { return py::str(dt).cast<std::string>(); }

// Gradient dtype from the array, or from `hint` for raw 16-bit views of bfloat16 data.
DType grad_dtype(const py::array& g, std::optional<DType> hint) {
  const py::dtype dt = g.dtype();
  if (hint) {
    if (py::ssize_t(fastps::dtype_size(*hint)) != dt.itemsize())
      throw py::type_error(fastps::detail::format(
          "push: grad has %zd-byte elements, expected %zu for %s", dt.itemsize(),
          fastps::dtype_size(*hint), fastps::dtype_name(*hint)));
    return *hint;
  }
  if (native_order(dt)) {
    if (dt.num() == kNpyFloat) return DType::kF32;
    if (dt.num() == kNpyHalf) return DType::kF16;
    if (dt.itemsize() == 2 && py::str(dt.attr("name")).cast<std::string>() == "bfloat16")
      return DType::kBF16;  // ml_dtypes.bfloat16
  }
  throw py::type_error("push: grad has dtype " + dtype_str(dt) +
                       ", expected float32, float16 or bfloat16 (native byte order)");
}

void check_contiguous(const char* api, const char* arg, const py::array& a) {
  FASTPS_CHECK_ARG(a.flags() & py::array::c_style,
                   "%s: %s is not C-contiguous (pass np.ascontiguousarray(%s) or .contiguous())",
                   api, arg, arg);
}

float* out_buffer(const char* api, py::array& out) {
  const py::dtype dt = out.dtype();
  if (dt.num() != kNpyFloat || !native_order(dt))
    throw py::type_error(fastps::detail::format("%s: out has dtype %s, expected float32", api,
                                                dtype_str(dt).c_str()));
  check_contiguous(api, "out", out);
  FASTPS_CHECK_ARG(out.writeable(), "%s: out is read-only, expected a writeable array", api);
  return static_cast<float*>(out.mutable_data());
}

// A Python integer (anything with __index__) as long long, saturating beyond its range so that
// the config's range check reports it (TypeError for a non-integer, as int fields do).
long long as_integer(const py::object& v) {
  auto i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow) return overflow > 0 ? LLONG_MAX : LLONG_MIN;
  return x;
}

// An integer StoreConfig field whose setter narrows through `narrow` (fastps/config.h), which
// raises ValueError naming the Store argument for a value outside the field's type.
template <typename T, typename Narrow>
void int_field(py::class_<StoreConfig>& cls, const char* name, T StoreConfig::* field,
               Narrow narrow) {
  cls.def_property(
      name, [field](const StoreConfig& c) { return c.*field; },
      [field, narrow](StoreConfig& c, const py::object& v) { c.*field = narrow(as_integer(v)); });
}

py::dict stats_dict(const fastps::Stats& s, const StoreConfig& cfg) {
  py::dict d;
  d["clock"] = s.clock;
  d["pushes"] = s.pushes;
  d["shard_updates"] = s.shard_updates;
  d["dropped"] = s.dropped;
  d["cas_failures"] = s.cas_failures;
  d["slot_waits"] = s.slot_waits;
  d["lock_wait_s"] = static_cast<double>(s.lock_wait_ns) * 1e-9;
  d["bytes_applied"] = s.bytes_applied;
  d["nonfinite_skipped"] = s.nonfinite_skipped;
  d["learners"] = s.learners;
  d["recovered"] = s.recovered;
  d["torn_shards"] = s.torn_shards;
  if (cfg.mode == Mode::kLeashed) {
    d["slots_in_use"] = s.slots_in_use;
    d["slots_touched"] = s.slots_touched;
  }
  d["staleness_hist"] = s.staleness_hist;
  d["versions"] = s.versions;
  if (cfg.step.kind == StepKind::kTailTau) {
    d["step_hist"] = s.step_hist.empty() ? py::object(py::none()) : py::cast(s.step_hist);
    d["step_builds"] = s.step_builds;
  }
  d["pinned"] = s.pinned;
  d["pin_error"] = s.pin_error;
  d["mode"] = fastps::mode_name(cfg.mode);
  d["shards"] = cfg.shards;
  d["size"] = cfg.size;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastps native core (use the fastps package, not this module)";
  m.attr("__version__") = FASTPS_VERSION;
  m.attr("built_with_cuda") = fastps::built_with_cuda();
  m.attr("kernel_isa") = fastps::kernel_isa();
  m.def(
      "process_alive", [](int32_t pid) { return fastps::process_alive(pid); }, py::arg("pid"),
      "True while process pid exists and is not a zombie (the registry's liveness rule).");
  m.def("cuda_available", &fastps::cuda_available,
        "True when a CUDA driver and a GPU answer; False on CPU-only builds or machines.");

  m.def(
      "probe_copy",
      [](py::array_t<float, py::array::c_style> dst, py::array_t<float, py::array::c_style> src) {
        FASTPS_CHECK_ARG(dst.size() == src.size(), "probe_copy: dst has %zd elements, src %zd",
                         dst.size(), src.size());
        float* d = dst.mutable_data();
        const float* s = src.data();
        py::gil_scoped_release nogil;
        fastps::probe_copy(d, s, static_cast<size_t>(dst.size()));
      },
      py::arg("dst").noconvert(), py::arg("src").noconvert(),
      "Bandwidth probe: dst[:] = src (memcpy).");
  m.def(
      "probe_triad",
      [](py::array_t<float, py::array::c_style> a, py::array_t<float, py::array::c_style> b,
         py::array_t<float, py::array::c_style> c, float s) {
        FASTPS_CHECK_ARG(a.size() == b.size() && a.size() == c.size(),
                         "probe_triad: a, b, c have %zd, %zd, %zd elements", a.size(), b.size(),
                         c.size());
        float* pa = a.mutable_data();
        const float* pb = b.data();
        const float* pc = c.data();
        py::gil_scoped_release nogil;
        fastps::probe_triad(pa, pb, pc, s, static_cast<size_t>(a.size()));
      },
      py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("c").noconvert(), py::arg("s"),
      "Bandwidth probe: a[:] = b + s * c.");
  m.def(
      "probe_axpy",
      [](py::array_t<float, py::array::c_style> w, py::array_t<float, py::array::c_style> g,
         float s) {
        FASTPS_CHECK_ARG(w.size() == g.size(), "probe_axpy: w has %zd elements, g %zd", w.size(),
                         g.size());
        float* pw = w.mutable_data();
        const float* pg = g.data();
        py::gil_scoped_release nogil;
        fastps::probe_axpy(pw, pg, s, static_cast<size_t>(w.size()));
      },
      py::arg("w").noconvert(), py::arg("g").noconvert(), py::arg("s"),
      "Bandwidth probe: w[:] += s * g (in place).");

  m.def(
      "narrow",
      [](py::array_t<uint16_t, py::array::c_style> dst, py::array_t<float, py::array::c_style> src,
         DType dtype) {
        FASTPS_CHECK_ARG(dst.size() == src.size(), "narrow: dst has %zd elements, src %zd",
                         dst.size(), src.size());
        uint16_t* d = dst.mutable_data();
        const float* s = src.data();
        py::gil_scoped_release nogil;
        fastps::narrow(d, dtype, s, static_cast<size_t>(src.size()));
      },
      py::arg("dst").noconvert(), py::arg("src").noconvert(), py::arg("dtype"),
      "dst[:] = the float16 or bfloat16 bits of src, rounded to nearest even (the pull path's "
      "conversion).");

  py::enum_<Mode>(m, "Mode")
      .value("locked", Mode::kLocked)
      .value("hogwild", Mode::kHogwild)
      .value("leashed", Mode::kLeashed);
  py::enum_<DType>(m, "DType")
      .value("float32", DType::kF32)
      .value("float16", DType::kF16)
      .value("bfloat16", DType::kBF16);

  py::enum_<fastps::NanGuard>(m, "NanGuard")
      .value("raise_", fastps::NanGuard::kRaise)
      .value("skip", fastps::NanGuard::kSkip)
      .value("off", fastps::NanGuard::kOff);

  py::enum_<StepKind>(m, "StepKind")
      .value("constant", StepKind::kConstant)
      .value("inverse", StepKind::kInverse)
      .value("exponential", StepKind::kExponential)
      .value("tail_tau", StepKind::kTailTau)
      .value("distance", StepKind::kDistance)
      .value("hook", StepKind::kHook);

  py::class_<StepConfig>(m, "StepConfig")
      .def(py::init<>())
      .def_readwrite("kind", &StepConfig::kind)
      .def_readwrite("beta", &StepConfig::beta)
      .def_readwrite("a", &StepConfig::a)
      .def_readwrite("warmup", &StepConfig::warmup)
      .def_readwrite("refresh", &StepConfig::refresh)
      .def_readwrite("c", &StepConfig::c)
      .def_readwrite("eta_max", &StepConfig::eta_max);

  py::class_<StoreConfig> store_config(m, "StoreConfig");
  store_config.def(py::init<>())
      .def_readwrite("mode", &StoreConfig::mode)
      .def_readwrite("lr", &StoreConfig::lr)
      .def_readwrite("momentum", &StoreConfig::momentum)
      .def_readwrite("nesterov", &StoreConfig::nesterov)
      .def_readwrite("weight_decay", &StoreConfig::weight_decay)
      .def_readwrite("nan_guard", &StoreConfig::nan_guard)
      .def_readwrite("step", &StoreConfig::step)
      .def("validate", &StoreConfig::validate,
           "Raises ValueError naming the Store argument unless every field is in range.");
  int_field(store_config, "size", &StoreConfig::size, fastps::config_size);
  int_field(store_config, "shards", &StoreConfig::shards,
            [](long long v) { return fastps::config_u32("shards", v); });
  int_field(store_config, "persistence", &StoreConfig::persistence,
            [](long long v) { return fastps::config_i32("persistence", v); });
  int_field(store_config, "max_learners", &StoreConfig::max_learners,
            [](long long v) { return fastps::config_u32("max_learners", v); });
  int_field(store_config, "staleness_bins", &StoreConfig::staleness_bins,
            [](long long v) { return fastps::config_u32("staleness_bins", v); });

  m.def(
      "shard_ranges",
      [](uint64_t size, uint32_t shards) { return fastps::shard_ranges(size, shards); },
      py::arg("size"), py::arg("shards"),
      "[begin, end) of each of `shards` contiguous shards of `size` elements: whole 64-byte "
      "blocks (16 floats), as equal as blocks allow (the split every Store uses).");

  py::class_<fastps::Counters>(m, "Counters")
      .def(py::init<>())
      .def_readwrite("clock", &fastps::Counters::clock)
      .def_readwrite("pushes", &fastps::Counters::pushes)
      .def_readwrite("nonfinite_skipped", &fastps::Counters::nonfinite_skipped)
      .def_readwrite("versions", &fastps::Counters::versions)
      .def_readwrite("hist", &fastps::Counters::hist)
      .def_readwrite("step_updates", &fastps::Counters::step_updates)
      .def_readwrite("cdf_ready", &fastps::Counters::cdf_ready)
      .def_readwrite("cdf", &fastps::Counters::cdf)
      .def_readwrite("cdf_hist", &fastps::Counters::cdf_hist);

  py::class_<fastps::SegmentInfo>(m, "SegmentInfo")
      .def_readonly("is_store", &fastps::SegmentInfo::is_store)
      .def_readonly("creator_pid", &fastps::SegmentInfo::creator_pid)
      .def_readonly("size", &fastps::SegmentInfo::size)
      .def_readonly("mode", &fastps::SegmentInfo::mode)
      .def_readonly("creator_alive", &fastps::SegmentInfo::creator_alive);

  py::class_<Store, std::shared_ptr<Store>>(m, "Store")
      .def_static(
          "create",
          [](const StoreConfig& cfg, std::optional<py::array_t<float, py::array::c_style>> init,
             const std::string& shared) {
            const float* p = nullptr;
            if (init) {
              FASTPS_CHECK_ARG(static_cast<uint64_t>(init->size()) == cfg.size,
                               "Store: init has %zd elements, expected size=%llu", init->size(),
                               static_cast<unsigned long long>(cfg.size));
              p = init->data();
            }
            py::gil_scoped_release nogil;
            return Store::create(cfg, p, shared);
          },
          py::arg("config"), py::arg("init").none(true), py::arg("shared") = "")
      .def_static(
          "attach",
          [](const std::string& name) {
            py::gil_scoped_release nogil;
            return Store::attach(name);
          },
          py::arg("name"))
      .def("close", &Store::close, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("closed", &Store::closed)
      .def_property_readonly("config", &Store::config)
      .def_property_readonly("name", &Store::name)
      .def_property_readonly("is_creator", &Store::is_creator)
      .def("shard_range", &Store::shard_range, py::arg("shard"))
      .def(
          "read",
          [](const Store& s, py::array out) {
            float* p = out_buffer("read", out);
            const auto n = static_cast<size_t>(out.size());
            py::gil_scoped_release nogil;
            s.read(p, n);
          },
          py::arg("out").noconvert())
      .def("stats", [](const Store& s) { return stats_dict(s.stats(), s.config()); })
      .def("learner", &Store::learner)
      .def("recover", &Store::recover, py::call_guard<py::gil_scoped_release>())
      .def(
          "save",
          [](const Store& s, py::array params, std::optional<py::array> momentum) {
            float* p = out_buffer("save", params);
            float* m = momentum ? out_buffer("save", *momentum) : nullptr;
            FASTPS_CHECK_ARG(static_cast<uint64_t>(params.size()) == s.config().size &&
                                 (!momentum || momentum->size() == params.size()),
                             "save: buffers must have %llu elements",
                             static_cast<unsigned long long>(s.config().size));
            py::gil_scoped_release nogil;
            return s.save(p, m);
          },
          py::arg("params").noconvert(), py::arg("momentum").none(true))
      .def(
          "load",
          [](Store& s, py::array_t<float, py::array::c_style> params,
             std::optional<py::array_t<float, py::array::c_style>> momentum,
             const fastps::Counters& c) {
            FASTPS_CHECK_ARG(static_cast<uint64_t>(params.size()) == s.config().size &&
                                 (!momentum || momentum->size() == params.size()),
                             "load: arrays must have %llu elements",
                             static_cast<unsigned long long>(s.config().size));
            const float* p = params.data();
            const float* m = momentum ? momentum->data() : nullptr;
            py::gil_scoped_release nogil;
            s.load(p, m, c);
          },
          py::arg("params"), py::arg("momentum").none(true), py::arg("counters"))
      .def_static("inspect", &Store::inspect, py::arg("name"))
      .def("creator_alive", &Store::creator_alive)
      .def_property_readonly("reclaimed_pid", &Store::reclaimed_pid)
      .def("_hold_cdf_build", &Store::hold_cdf_build)
      .def(
          "set_step_hook",
          [](Store& s, py::function fn) {
            // Dropped wherever the Store goes, possibly without the GIL: take it to release.
            std::shared_ptr<py::function> f(new py::function(std::move(fn)), [](py::function* p) {
              py::gil_scoped_acquire gil;
              delete p;
            });
            s.set_step_hook([f](const StepContext& c) {
              py::gil_scoped_acquire gil;
              py::dict ctx;
              ctx["shard"] = c.shard;
              ctx["learner"] = c.learner;
              ctx["version"] = c.version;
              ctx["version_read"] = c.version_read;
              py::object r = (*f)(c.tau, ctx);
              if (!py::isinstance<py::float_>(r) && !py::isinstance<py::int_>(r) &&
                  !py::hasattr(r, "__float__"))
                throw py::type_error("push: the step_size hook returned " +
                                     py::type::of(r).attr("__name__").cast<std::string>() +
                                     ", expected a float");
              return r.cast<double>();
            });
          },
          py::arg("hook"));

  py::class_<Learner>(m, "Learner")
      .def(
          "pull",
          [](Learner& l, py::array out) {
            float* p = out_buffer("pull", out);
            const auto n = static_cast<size_t>(out.size());
            py::gil_scoped_release nogil;
            l.pull(p, n);
          },
          py::arg("out").noconvert())
      .def(
          "push",
          [](Learner& l, const py::array& grad, std::optional<DType> dtype) {
            const DType dt = grad_dtype(grad, dtype);
            check_contiguous("push", "grad", grad);
            const void* p = grad.data();
            const auto n = static_cast<size_t>(grad.size());
            try {
              py::gil_scoped_release nogil;
              return l.push(p, dt, n);
            } catch (py::error_already_set& e) {  // raised by a step_size hook
              e.value().attr("add_note")(fastps::detail::format(
                  "push: raised by the step_size hook; %u shard(s) of this push had been applied, "
                  "the others are unchanged",
                  l.last_push_applied()));
              throw;
            }
          },
          py::arg("grad").noconvert(), py::arg("dtype") = py::none())
      .def("refuse_nonfinite", &Learner::refuse_nonfinite, py::arg("index"))
      .def("backdate", &Learner::backdate, py::arg("updates"))
      .def("close", &Learner::close)
      .def_property_readonly("id", &Learner::id)
      .def("read_version", &Learner::read_version, py::arg("shard"))
      .def_property_readonly("last_push_applied", &Learner::last_push_applied)
      .def_property_readonly("last_push_versions", &Learner::last_push_versions);

  // Raw addresses: the facade (fastps/store.py) validates the tensors and keeps them alive.
  py::class_<fastps::Transfer>(m, "Transfer")
      .def(py::init([](Learner& l, const std::string& engine, int device, uint64_t chunk_bytes,
                       uint32_t ring, uint32_t copy_delay_us, bool record) {
             FASTPS_CHECK_ARG(engine == "cpu" || engine == "cuda",
                              "transfer: engine must be 'cpu' or 'cuda' (got '%s')",
                              engine.c_str());
             auto make = [&] {
               return engine == "cpu" ? fastps::make_cpu_engine(copy_delay_us, record)
                                      : fastps::make_cuda_engine(device);
             };
             py::gil_scoped_release nogil;
             return std::make_unique<fastps::Transfer>(
                 l, make(), make(), fastps::TransferConfig{chunk_bytes, ring, record});
           }),
           py::arg("learner"), py::arg("engine"), py::arg("device"), py::arg("chunk_bytes"),
           py::arg("ring"), py::arg("copy_delay_us"), py::arg("record"), py::keep_alive<1, 2>())
      .def(
          "push",
          [](fastps::Transfer& t, uintptr_t grad, DType dtype, size_t n,
             std::optional<uintptr_t> stream) {
            try {
              py::gil_scoped_release nogil;
              return t.push(reinterpret_cast<const void*>(grad), dtype, n, stream);
            } catch (py::error_already_set& e) {  // raised by a step_size hook
              e.value().attr("add_note")(
                  "push: raised by the step_size hook; shards applied before it keep the update");
              throw;
            }
          },
          py::arg("grad"), py::arg("dtype"), py::arg("n"), py::arg("stream").none(true))
      .def(
          "pull",
          [](fastps::Transfer& t, uintptr_t out, DType dtype, size_t n, uintptr_t stream) {
            py::gil_scoped_release nogil;
            t.pull(reinterpret_cast<void*>(out), dtype, n, stream);
          },
          py::arg("out"), py::arg("dtype"), py::arg("n"), py::arg("stream"))
      .def("timeline",
           [](const fastps::Transfer& t) {
             py::list out;
             for (const auto& e : t.timeline())
               out.append(py::make_tuple(e.kind == fastps::TimelineEvent::kCopy ? "copy" : "apply",
                                         e.chunk, e.buffer, e.start_ns, e.end_ns));
             return out;
           })
      .def_property_readonly("engine", &fastps::Transfer::engine_name)
      .def_property_readonly("chunk_bytes",
                             [](const fastps::Transfer& t) { return t.config().chunk_bytes; })
      .def_property_readonly("ring", [](const fastps::Transfer& t) { return t.config().ring; });
}

"""Runtime simulator of the sync-to-async spectrum (Dutta et al. 2018; DESIGN.md, "Coordination").

P learners compute gradients; a parameter server (PS) averages K of them into one update. Each
learner's c-th computation takes X (compute: exp(mu), Delta + exp(mu), Pareto, fixed) and then D
(communication: push and pull, fixed or exponential); the gradient reaches the PS at
start + X + D. The variants differ in who waits, who gets the new model and what an update
cancels:

============== ======================================= ========================================
variant        an update takes                         then
============== ======================================= ========================================
sync           all P gradients on the current model    everyone restarts on the new model
k-sync         the first K on the current model        everyone restarts; the others' work is
                                                       cancelled (or, when already computed and
                                                       in flight, dropped on arrival)
k-batch-sync   K from any learners on the current      contributors keep computing on the same
               model                                   model; at the update everyone restarts
async          each gradient                           the pusher pulls the new model
k-async        K from K distinct learners, any model   the K contributors waited; they restart on
                                                       the new model, the others go on (stale)
k-batch-async  K from any learners, any model          a pusher pulls whatever is current at
                                                       once (the new model if its push made the
                                                       update), never waits
adasync        k-sync with K = min(P, ceil(K0 sqrt(F0/F))) re-set every ``interval`` time units
local-sgd      the P models after ``local_steps`` (tau)  everyone starts the next round on the
               local steps each, averaged by one       average (local.py: learner l's k-th
               exchange of delay D                     step of round r is entry r*tau + k)
============== ======================================= ========================================

Staleness of a gradient used in update j (0-based) = j - the version it was computed on.
Simultaneous arrivals are handled in learner order. Randomness: learner l's c-th computation
takes the c-th entry of its own stream (k-batch-sync: round r's i-th computation is entry
r*K + i), so variants run with the same seed see the same learner times; k-async with K = 1 is
exactly async and with K = P exactly sync.

Each variant has one exact implementation: order statistics per round (sync, k-sync,
k-batch-sync), merged renewal processes (async, k-batch-async), a heap of finish times
(k-async), a round loop (adasync), per-round sums of tau step times (local-sgd: a round takes
max_l sum_k Y_(l,k) + D). ``simulate`` returns a SimResult with the measurements and, where one
exists, the closed form (research/sync-async-spectrum.md, sections 2.2 and 3.3).
Optionally each update is also applied as an SGD step to a noisy quadratic, which gives the error
against simulated wall-clock time (``model="quadratic"``).

The rooms: delays.py (Delay, the per-learner streams Cycles, harmonic), traces.py (the
variants' event sequences), quadratic.py (Quadratic, adasync), result.py (SimResult and the
closed forms), local.py (local-sgd's rounds, its sync baseline and closed forms), run.py
(simulate). Which variants exist and how each fixes or bounds K is the variant table's
(fastps.train.variants), shared with fit() and the CLI.
"""

from fastps.sim.delays import COMM_KINDS, DELAYS, Delay, harmonic
from fastps.sim.quadratic import MODELS, Quadratic
from fastps.sim.result import SimResult
from fastps.sim.run import VARIANTS, simulate

__all__ = ["COMM_KINDS", "DELAYS", "MODELS", "VARIANTS", "Delay", "Quadratic", "SimResult",
           "harmonic", "simulate"]  # fmt: skip

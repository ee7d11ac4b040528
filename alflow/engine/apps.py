"""The one function Parsl runs on workers, `execute`, and its thin adapters to science code.

`execute(envelope, request)` marks the attempt started, arms its time limit, hands the
request to the adapter for its type, keeps the result durable in the run directory
(`durable.py`) and returns it. Adapters only translate: a request (results.py) in, a
science call, a typed result out. They never touch the database. Heavy imports happen
inside the adapters, so the orchestrator imports this module cheaply, and a worker keeps
its oracle alive between tasks (imports and PySCF's forked child are paid once).

Time limits are enforced where the work runs: past its limit an attempt marks itself
expired and SIGKILLs its own worker process — the only way to stop C code (an SCF, a
torch kernel) — and the worker pool reports the worker lost, which the scheduler reads as a
timeout. The scheduler also keeps its own deadline, in case the worker pool cannot report.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Callable

from alflow.engine import durable
from alflow.engine.graceful import FinishCallBeforeStopping
from alflow.engine.results import (
    Envelope,
    EvaluateRequest,
    Evaluation,
    LabelBatch,
    LabelledGeometry,
    LabelRequest,
    Rescore,
    RescoreRequest,
    SampleRequest,
    SamplingResult,
    Timing,
    TrainedMember,
    TrainRequest,
    ValidateRequest,
    Validation,
    Warmup,
    WarmupRequest,
    jsonable,
)

_ORACLES: dict[str, Any] = {}


def _oracle(settings):
    from alflow.oracles import make_oracle

    key = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    if key not in _ORACLES:
        _ORACLES[key] = make_oracle(settings)
    return _ORACLES[key]


def _ensemble(ref):
    from alflow.potentials import Ensemble

    return Ensemble.load(list(ref.checkpoints), list(ref.sha256s))


# ------------------------------------------------------------------------- adapters
def warm_up(req: WarmupRequest, env: Envelope) -> Warmup:
    """Import what a role's tasks need (and build the oracle) before the first real task,
    so worker start-up is not charged to labelling or training."""
    started = time.time()
    if req.role == "oracle" and req.oracle is not None:
        _oracle(req.oracle)
    elif req.role in ("train", "sample"):
        import alflow.potentials.ensemble  # torch + SchNetPack
        import alflow.potentials.train  # noqa: F401
    return Warmup(req.role, Timing.since(started))


def label_batch(req: LabelRequest, env: Envelope) -> LabelBatch:
    """Label each geometry with the campaign's oracle; each finished call is kept durable at
    once, and a call an earlier attempt already finished is read back, not repeated."""
    started = time.time()
    oracle = _oracle(req.oracle)
    out = []
    with FinishCallBeforeStopping() as term:  # a finished call is written before SIGTERM ends us
        for job in req.jobs:
            if term.stopping.is_set():
                break  # told to stop: start no new call
            kept = durable.load_label(env.run_dir, job.label_key)
            if kept is None:
                label = oracle(job.atoms)
                if term.stopping.is_set() and label.status != "ok":
                    break  # cut off by the same signal (a per-call subprocess): not a result
                kept = LabelledGeometry(job.geometry_id, label, task_id=env.task_id)
                durable.save_label(env.run_dir, job.label_key, kept)
            out.append(kept)
    return LabelBatch(tuple(out), Timing.since(started))


def train(req: TrainRequest, env: Envelope) -> TrainedMember:
    started = time.time()
    from alflow.engine.datasets import load_frames
    from alflow.potentials import train_member

    frames = load_frames(req.dataset)
    stresses = frames.stresses if any(s is not None for s in frames.stresses) else None
    result = train_member(frames.atoms, frames.energies, frames.forces, stresses, req.model,
                          req.training, req.seed, req.workdir, init_checkpoint=req.init_checkpoint,
                          init_sha256=req.init_sha256)
    return TrainedMember(req.member, str(result.checkpoint), result.sha256, jsonable(result.metrics),
                         Timing.since(started))


def evaluate(req: EvaluateRequest, env: Envelope) -> Evaluation:
    started = time.time()
    from alflow.engine.datasets import load_frames
    from alflow.potentials import evaluate_ensemble

    ens = _ensemble(req.ensemble)
    result = None
    if req.test_dataset is not None:
        test = load_frames(req.test_dataset)
        result = evaluate_ensemble(ens, test.atoms, test.energies, test.forces)
    fit = load_frames(req.fit_dataset)
    sigma_train = tuple(float(x) for x in ens.predict(fit.atoms).sigma_f)
    profile = None
    if req.profile_dataset is not None:
        from alflow.validation import profile_errors

        path = load_frames(req.profile_dataset)
        profile = profile_errors(ens.predict(path.atoms).energy, path.energies)
    return Evaluation(result, sigma_train, Timing.since(started), profile)


def validate(req: ValidateRequest, env: Envelope) -> Validation:
    started = time.time()
    from alflow import validation

    reference = validation.campaign_reference(req.reference_start, req.settings, req.oracle,
                                              cache_dir=req.cache_dir)
    report = validation.validate(_ensemble(req.ensemble), reference, req.settings,
                                 rng_seed=req.rng_seed, template=req.reference_start)
    return Validation(report, Timing.since(started))


def sample(req: SampleRequest, env: Envelope) -> SamplingResult:
    started = time.time()
    from alflow.sampling.samplers import run_sampler

    ens = _ensemble(req.ensemble)
    out = run_sampler(ens, req.sampler, req.seeds, rng_seed=req.rng_seed,
                      train_energies_per_atom=req.train_energies_per_atom,
                      trust_hi=req.trust_hi_sigma)
    candidates = out.candidates
    if req.carving is not None:
        from alflow.sampling.condensed import carve_candidates

        candidates = carve_candidates(ens, candidates, req.carving, req.carving_radius,
                                      rng_seed=req.rng_seed)
    return SamplingResult(req.sampler_index, tuple(candidates), tuple(out.walkers), Timing.since(started))


def rescore(req: RescoreRequest, env: Envelope) -> Rescore:
    started = time.time()
    sigma = _ensemble(req.ensemble).predict(list(req.geometries)).sigma_f
    return Rescore(tuple(float(x) for x in sigma), Timing.since(started))


ADAPTERS: dict[type, Callable[[Any, Envelope], Any]] = {
    WarmupRequest: warm_up, LabelRequest: label_batch, TrainRequest: train,
    EvaluateRequest: evaluate, ValidateRequest: validate, SampleRequest: sample,
    RescoreRequest: rescore,
}


# ------------------------------------------------------------------------- the app
def _expire(run_dir: str, task_id: int) -> None:
    """Past the time limit: say so on disk, then end this worker process (and with it
    whatever C code the task is stuck in)."""
    try:
        durable.mark_expired(run_dir, task_id)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


class AbandonedAttempt(RuntimeError):
    """The scheduler gave up on this attempt before it started (a retry runs instead)."""


def execute(envelope: Envelope, request: Any) -> Any:
    """Run one attempt on a worker (see module docstring)."""
    adapter = ADAPTERS[type(request)]
    durable.mark_started(envelope.run_dir, envelope.task_id)
    if durable.abandoned(envelope.run_dir, envelope.task_id):
        # the scheduler declared this attempt stalled and queued another: running it as
        # well would repeat its work (its oracle calls above all)
        raise AbandonedAttempt(f"task {envelope.task_id} was abandoned before it started")
    timer = None
    if envelope.time_limit_s is not None and envelope.enforce_limit:
        timer = threading.Timer(envelope.time_limit_s, _expire, (envelope.run_dir, envelope.task_id))
        timer.daemon = True
        timer.start()
    try:
        result = adapter(request, envelope)
    finally:
        if timer is not None:
            timer.cancel()
    if envelope.key:
        durable.save_result(envelope.run_dir, envelope.key, envelope.task_id, result)
    return result

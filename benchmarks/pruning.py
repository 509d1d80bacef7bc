"""Pruning on replay: which rule saves epochs and keeps the configuration a study would pick.

Pruning decisions depend only on the validation curves, so each regime's POOLS of configurations
are trained to the end once, without pruning, through the real runner
(``study.run.session.run_study``, random sampler, ``pruner = "none"``, each pool its own study
seed), and every candidate rule of ``study.run.replay.CANDIDATES`` (plus ``none``) is then
replayed over each pool's recorded curves in ``--orders`` trial orders (``replay``: the runner's
own ``Reporter`` and ``build_pruner``, a fresh pruner and in-memory study per order, the live
study's name). Per candidate, over all orders of a set of pools:

- epochs saved: mean and 5th percentile over orders;
- P(the unpruned pick survives): the configuration with the best validation value (what the
  study without pruning picks) is not stopped;
- regret: test metric of the unpruned pick minus that of the pruned study's pick, one-sided (a
  luckier pick counts as 0); mean and 95th percentile;
- P(top 3 survive): the three best configurations by validation value are all kept;
- goal: mean saved >= 50 % and regret <= 0.01 in >= 90 % of the orders, in every pool.

Candidates are compared on pools A; the winner (the one meeting the goal on every pool A of every
regime with the most epochs saved, else the smallest shortfall) is then reported on fresh pools B
(new study seeds, new data: new synthetic images / a new digits split, so new test images). Beside
the goal the seed-to-seed SD of one configuration's test metric is printed (the pool A0 pick
trained with ``--sd-seeds`` seeds), and whether CPU training is deterministic here: the first of
those seeds trained a second time, same seed and threads, its curves compared bit for bit.

Regimes: ``fundus`` = the dr_focal space with ResNet18 from scratch (loss, focal settings and lr
sampled) on synthetic-fundus JPEG files (noisy curves, late jumps); ``digits`` = the cifar_loss
space with the lab's convnet (loss, focal gamma, lr sampled) on scikit-learn's real digits
(smoother curves). Each pool's curves and test metrics are cached as JSON under
``--work/pruning-pools/`` keyed by the regime's settings, the pool's seeds, the last commit that
changed ``objectives/`` or ``study/`` and the torch version; a rerun with the same settings only
replays. ``--fixtures DIR`` writes pool A0 of each regime as ``DIR/<regime>.json``.

    python benchmarks/pruning.py
    python benchmarks/pruning.py --regimes digits --orders 500 --digits-configs 24
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from study import records
from study.run.options import RunOptions
from study.run.output import Output
from study.run.replay import CANDIDATES, Candidate, Curve, OrderResult, orders, replay, unpruned_pick
from study.run.session import run_study
from study.spaces import registry
from study.spaces.space import SearchSpace

from common import DEFAULT_WORK, add_threads_arg, csv_strs, percent, print_header, set_threads, table

STUDY_NAME = "pruning-bench"
GOAL_SAVED, GOAL_REGRET, GOAL_SHARE = 0.50, 0.01, 0.90
NONE = Candidate("none", {"pruner": "none"})
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- pools


@dataclass(frozen=True)
class Regime:
    """A search space on a dataset: `space(args)` the pinned space, `data(args, seed, work)` the
    data folder for data seed `seed` (each seed new images / a new test split)."""

    name: str
    metric: str
    space: Callable[[argparse.Namespace], SearchSpace]
    data: Callable[[argparse.Namespace, int, Path], Path]
    settings: Callable[[argparse.Namespace], dict]


def _fundus_settings(args) -> dict:
    return {"epochs": args.fundus_epochs, "image_size": args.image_size, "batch_size": 32,
            "train_images": args.fundus_images, "test_images": args.fundus_test, "configs": args.fundus_configs}


def _fundus_space(args) -> SearchSpace:
    s = _fundus_settings(args)
    space = registry.resolve("dr_focal").with_settings(epochs=s["epochs"], image_size=s["image_size"],
                                                       batch_size=s["batch_size"])
    return space.pin("arch", "resnet18").pin("pretrained", False)  # no weights can be downloaded here


def _fundus_data(args, seed: int, work: Path) -> Path:
    from objectives import synthetic

    s = _fundus_settings(args)
    name = f"synthetic-fundus-pairs-{s['train_images']}-{s['test_images']}-{s['image_size']}px-seed{seed}"
    root = work / "jpeg" / name
    synthetic.generate(root, s["train_images"], s["test_images"], size=s["image_size"], seed=seed)
    return root


def _digits_settings(args) -> dict:
    return {"epochs": args.digits_epochs, "image_size": 32, "batch_size": 32, "train_images": 1797 - args.digits_test,
            "test_images": args.digits_test, "configs": args.digits_configs}


def _digits_space(args) -> SearchSpace:
    s = _digits_settings(args)
    space = registry.resolve("cifar_loss").with_settings(epochs=s["epochs"], batch_size=s["batch_size"], hflip=False,
                                                         norm_mean=[], norm_std=[], val_fraction=0.2)
    return space.pin("arch", "convnet")  # [embedded]'s net; resnet18_32 costs ~30 s an epoch here


def _digits_data(args, seed: int, work: Path) -> Path:
    from objectives import digits

    s = _digits_settings(args)
    root = work / "digits" / f"digits-{s['train_images']}-{s['test_images']}-seed{seed}"
    return digits.export(root, s["train_images"], s["test_images"], seed)


REGIMES = {
    "fundus": Regime("fundus", "kappa", _fundus_space, _fundus_data, _fundus_settings),
    "digits": Regime("digits", "accuracy", _digits_space, _digits_data, _digits_settings),
}


@dataclass(frozen=True)
class Pool:
    """Configurations trained to the end: curves (validation metric per epoch), test metric."""

    regime: str
    label: str
    metric: str
    curves: tuple[Curve, ...]
    test: tuple[float, ...]
    doc: dict

    @classmethod
    def from_doc(cls, doc: dict, label: str) -> Pool:
        metric = doc["metric"]
        trials = doc["trials"]
        return cls(doc.get("regime", "?"), label, metric,
                   tuple(Curve.from_curves(t["curves"], metric) for t in trials),
                   tuple(float(t[f"test_{metric}"]) for t in trials), doc)


def code_commit() -> str:
    """The last commit that changed the training code (objectives/, study/): what a pool's
    curves depend on (a README commit does not invalidate the cache); '+dirty' if uncommitted."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("log", "-1", "--format=%H", "--", "objectives", "study") or "unknown"
    dirty = git("status", "--porcelain", "--", "objectives", "study")
    return commit + ("+dirty" if dirty else "")


def pool_key(regime: Regime, args, role: str, study_seed: int, data_seed: int) -> dict:
    return {"regime": regime.name, "settings": regime.settings(args), "role": role, "study_seed": study_seed,
            "data_seed": data_seed, "threads": args.threads, "commit": code_commit(), "torch": torch.__version__}


def cached(work: Path, key: dict, train: Callable[[], dict]) -> tuple[dict, bool]:
    """The JSON document stored under `key` in `work/pruning-pools/`, trained (and stored) if absent."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = work / "pruning-pools" / f"{key['regime']}-{key['role']}-{digest}.json"
    if path.exists():
        return json.loads(path.read_text()), True
    doc = {**key, **train()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return doc, False


def run_pool(space: SearchSpace, root: Path, work: Path, trials: int, seed: int, metric: str, log: Path) -> dict:
    """`trials` configurations of `space` trained to the end (random sampler seeded `seed`,
    pruner none) through `run_study`; their curves (epoch, phase, val_<metric>) and test metric."""
    space = dataclasses.replace(space, study=dataclasses.replace(space.study, trials=trials, seed=seed,
                                                                 sampler="random"))
    scratch = Path(tempfile.mkdtemp(prefix="pruning-pool-", dir=work))
    started = time.perf_counter()
    try:
        opts = RunOptions(space=space, results_dir=scratch, study_name=STUDY_NAME,
                          storage_url=f"sqlite:///{scratch / 'pool.db'}", data=root, trials=trials, device="cpu",
                          pruner="none", trial_pages=False)
        with open(log, "w") as stream:
            study = run_study(opts, Output(stream=stream, err=stream))
        rows = []
        for t in study.get_trials(deepcopy=False):
            if t.state != TrialState.COMPLETE:
                raise SystemExit(f"pool trial {t.number} is {t.state.name}; see {log}")
            record = records.TrialRecord.from_trial(t)
            c = record.curves
            rows.append({"number": t.number, "params": t.params,
                         "curves": {k: c[k] for k in ("epoch", "phase", f"val_{metric}", "train_loss")},
                         f"test_{metric}": record.test_metrics[metric]})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"metric": metric, "direction": "maximize", "epochs": space.fixed["epochs"], "trials": rows,
            "seconds": time.perf_counter() - started}


def pinned(space: SearchSpace, params: dict) -> SearchSpace:
    for name, value in params.items():
        space = space.pin(name, value)
    return space


# ---------------------------------------------------------------- replay statistics


@dataclass(frozen=True)
class Scores:
    """One candidate over the orders of one pool: arrays over orders."""

    saved: np.ndarray
    pick_kept: np.ndarray
    regret: np.ndarray
    top3_kept: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))

    @property
    def within(self) -> float:
        """The share of orders whose regret is <= GOAL_REGRET."""
        return float(np.mean(self.regret <= GOAL_REGRET + 1e-12))

    def meets(self) -> bool:
        return float(self.saved.mean()) >= GOAL_SAVED and self.within >= GOAL_SHARE


def unpruned_in_order(curves: Sequence[Curve], order: Sequence[int]) -> int:
    """The curve a study without pruning picks when its trials run in `order` (ties: the first)."""
    return order[unpruned_pick([curves[i] for i in order])]


def score(pool: Pool, results: Sequence[OrderResult]) -> Scores:
    """The benchmark's numbers for `results` (replays of `pool`): the unpruned pick of an order is
    what the study without pruning picks in that order (the best validation value, the first in
    trial order on ties, as Optuna's best trial); regret compares test metrics, one-sided; an
    order where no trial completed has an infinite regret."""
    best = sorted(range(len(pool.curves)), key=lambda i: -pool.curves[i].best(True))[:3]
    saved, kept, regret, top3 = [], [], [], []
    for r in results:
        pick = unpruned_in_order(pool.curves, r.order)
        saved.append(r.saved)
        kept.append(pick not in r.stopped)
        regret.append(math.inf if r.picked is None else max(0.0, pool.test[pick] - pool.test[r.picked]))
        top3.append(all(i not in r.stopped for i in best))
    return Scores(np.array(saved), np.array(kept), np.array(regret), np.array(top3))


def replay_pool(pool: Pool, candidate: Candidate, base, n_orders: int, seed: int) -> Scores:
    epochs = pool.curves[0].epochs
    record = {"class": "NopPruner"} if candidate is NONE else candidate.record(epochs, base)
    return score(pool, replay(list(pool.curves), record, orders(len(pool.curves), n_orders, seed),
                              study_name=STUDY_NAME, metric=pool.metric))


def row(name: str, s: Scores) -> list:
    return [name, percent(float(s.saved.mean())), percent(float(np.percentile(s.saved, 5))),
            percent(float(s.pick_kept.mean())), f"{float(s.regret.mean()):.4f}",
            f"{float(np.percentile(s.regret, 95)):.4f}", percent(float(s.top3_kept.mean())), percent(s.within)]


HEADERS = ["candidate", "saved mean", "saved p5", "P(pick kept)", "regret mean", "regret p95", "P(top3 kept)",
           f"P(regret<={GOAL_REGRET})"]


def shortfall(per_pool: Sequence[Scores]) -> float:
    """How far the worst pool is from the goal (0 = met): relative shortfalls of saved and share."""
    saved = min(float(s.saved.mean()) for s in per_pool)
    share = min(s.within for s in per_pool)
    return max(0.0, GOAL_SAVED - saved) / GOAL_SAVED + max(0.0, GOAL_SHARE - share) / GOAL_SHARE


def goal_line(name: str, per_pool: dict[str, Sequence[tuple[str, Scores]]]) -> str:
    """The issue's goal line for candidate `name` over {regime: [(pool label, scores)]}."""
    misses = []
    for regime, pools in per_pool.items():
        for label, s in pools:
            if float(s.saved.mean()) < GOAL_SAVED:
                misses.append(f"{regime} {label}: {100 * float(s.saved.mean()):.2f}% saved < 50%")
            if s.within < GOAL_SHARE:
                misses.append(f"{regime} {label}: regret <= {GOAL_REGRET} in {percent(s.within)} of orders < 90%")
    head = f"goal (>= 50% saved, pick within {GOAL_REGRET} in >= 90% of orders, every regime) with {name}: "
    return head + ("met" if not misses else "missed by " + "; ".join(misses))


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default="fundus,digits")
    parser.add_argument("--pools-a", type=int, default=3, help="pools per regime to compare candidates on")
    parser.add_argument("--pools-b", type=int, default=2, help="fresh pools per regime the winner is reported on")
    parser.add_argument("--orders", type=int, default=200, help="replayed orders per pool and candidate")
    parser.add_argument("--fundus-configs", type=int, default=16)
    parser.add_argument("--fundus-epochs", type=int, default=12)
    parser.add_argument("--fundus-images", type=int, default=240, help="train images (20%% become validation)")
    parser.add_argument("--fundus-test", type=int, default=2000, help="test images (the issue: >= 2,000)")
    parser.add_argument("--image-size", type=int, default=32, help="fundus px")
    parser.add_argument("--digits-configs", type=int, default=16)
    parser.add_argument("--digits-epochs", type=int, default=12)
    parser.add_argument("--digits-test", type=int, default=600, help="held-out digits (1,797 in all)")
    parser.add_argument("--sd-seeds", type=int, default=3, help="seeds of one configuration for its test SD")
    parser.add_argument("--train-only", action="store_true", help="train (cache) the pools, replay nothing")
    parser.add_argument("--only", type=csv_strs, default=[],
                        help="with --train-only: train just these pools (e.g. A1,B0; sd for the seeds of one "
                             "configuration), to fill the cache from parallel processes")
    parser.add_argument("--fixtures", type=Path, help="write pool A0 of each regime as DIR/<regime>.json")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data, cached pools, runner logs")
    add_threads_arg(parser)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    regimes = [REGIMES[name] for name in csv_strs(args.regimes)]
    device = torch.device("cpu")
    threads_note = set_threads(args.threads, device)
    args.threads = torch.get_num_threads()
    print_header("pruning: candidate rules replayed over pools trained to the end by study.run.session.run_study",
                 device, torch_threads=threads_note,
                 regimes="; ".join(f"{r.name}: {r.settings(args)}" for r in regimes),
                 pools=f"{args.pools_a} A + {args.pools_b} B per regime, {args.orders} orders each",
                 code=code_commit())
    args.work.mkdir(parents=True, exist_ok=True)

    pools: dict[str, dict[str, list[Pool]]] = {}
    sd: dict[str, tuple[list[float], bool | None]] = {}
    for regime in regimes:
        space = regime.space(args)
        configs = regime.settings(args)["configs"]
        pools[regime.name] = {"A": [], "B": []}
        for role, count, offset in (("A", args.pools_a, 0), ("B", args.pools_b, 100)):
            for k in range(count):
                if args.only and f"{role}{k}" not in args.only:
                    continue
                study_seed, data_seed = 1000 * (offset + k), offset + k  # B: new study seeds, new images
                key = pool_key(regime, args, f"{role}{k}", study_seed, data_seed)
                log = args.work / f"pruning-{regime.name}-{role}{k}.log"
                doc, hit = cached(args.work, key, lambda: run_pool(space, regime.data(args, data_seed, args.work),
                                                                   args.work, configs, study_seed, regime.metric, log))
                pool = Pool.from_doc(doc, f"{role}{k}")
                pools[regime.name][role].append(pool)
                print(f"{regime.name} pool {role}{k}: {len(pool.curves)} configurations, study seed {study_seed}, "
                      f"data seed {data_seed}: {'cached' if hit else 'trained'} ({doc['seconds']:.0f} s to train)",
                      flush=True)
                if args.fixtures and role == "A" and k == 0:
                    args.fixtures.mkdir(parents=True, exist_ok=True)
                    trials = [{**t, "curves": {k: v for k, v in t["curves"].items() if k != "train_loss"}}
                              for t in doc["trials"]]  # ~20 KB: the columns a replay reads
                    fixture = {**doc, "trials": trials,
                               "command": "python benchmarks/pruning.py " + " ".join(sys.argv[1:])}
                    (args.fixtures / f"{regime.name}.json").write_text(json.dumps(fixture, separators=(",", ":")))
        if args.only and "sd" not in args.only:
            continue
        # one configuration (the pool A0 pick) with several seeds, and its first seed once more
        first = pools[regime.name]["A"][0]
        pick = first.doc["trials"][unpruned_pick(first.curves)]["params"]
        one = pinned(space, pick)
        runs = []
        for role, n in (("sd", args.sd_seeds), ("repeat", 1)):
            key = {**pool_key(regime, args, role, 7000, 0), "params": pick}
            log = args.work / f"pruning-{regime.name}-{role}.log"
            doc, _ = cached(args.work, key, lambda: run_pool(one, regime.data(args, 0, args.work), args.work, n,
                                                             7000, regime.metric, log))
            runs.append(doc["trials"])
        tests = [t[f"test_{regime.metric}"] for t in runs[0]]
        same = runs[0][0]["curves"] == runs[1][0]["curves"] and tests[0] == runs[1][0][f"test_{regime.metric}"]
        sd[regime.name] = (tests, same)
        print(f"{regime.name}: one configuration {pick}, test {regime.metric} over {len(tests)} seeds "
              f"{[round(v, 4) for v in tests]} (SD {np.std(tests, ddof=1):.4f}); trained twice with seed 7000 and "
              f"{args.threads} thread(s): curves and test metric {'bit-identical' if same else 'DIFFER'}", flush=True)
    if args.train_only:
        return

    candidates = [NONE, *CANDIDATES]
    started = time.perf_counter()
    scores: dict[str, dict[str, dict[str, list[tuple[str, Scores]]]]] = {}
    for regime in regimes:
        base = regime.space(args).study
        for role in ("A", "B"):
            for pool in pools[regime.name][role]:
                for c in candidates:
                    s = replay_pool(pool, c, base, args.orders, seed=0)
                    scores.setdefault(role, {}).setdefault(c.name, {}).setdefault(regime.name, []).append(
                        (pool.label, s))
    print(f"\nreplayed {len(candidates)} candidates x {args.orders} orders x "
          f"{sum(len(p['A']) + len(p['B']) for p in pools.values())} pools in {time.perf_counter() - started:.0f} s")

    for regime in regimes:
        print(f"\n{regime.name}, pools A ({len(pools[regime.name]['A'])} x {args.orders} orders), "
              f"test {regime.metric}:")
        print(table(HEADERS, [row(c.name, Scores.concat([s for _, s in scores["A"][c.name][regime.name]]))
                              for c in candidates]))
    ranked = sorted(CANDIDATES, key=lambda c: (
        shortfall([s for pools_ in scores["A"][c.name].values() for _, s in pools_]),
        -min(float(s.saved.mean()) for pools_ in scores["A"][c.name].values() for _, s in pools_)))
    winner = ranked[0]
    print(f"\non pools A: {goal_line(winner.name, scores['A'][winner.name])}")
    print(f"winner on pools A: {winner.name} (the goal met on every pool A with the most epochs saved, else the "
          f"smallest shortfall); runners-up: {', '.join(c.name for c in ranked[1:4])}")
    if not any(pools[r.name]["B"] for r in regimes):
        return
    shown = list(dict.fromkeys([winner.name, CANDIDATES[0].name]))
    print(f"\nfresh pools B, {' and '.join(shown)} (median: today's default):")
    rows = []
    for regime in regimes:
        for name in shown:
            for label, s in scores["B"][name][regime.name]:
                rows.append(row(f"{regime.name} {label} {name}", s))
    print(table(["regime pool candidate", *HEADERS[1:]], rows))
    for regime in regimes:
        tests, same = sd[regime.name]
        print(f"{regime.name}: seed-to-seed SD of one configuration's test {regime.metric}: "
              f"{np.std(tests, ddof=1):.4f} ({len(tests)} seeds; goal's regret bound {GOAL_REGRET}); "
              f"CPU training deterministic: {'yes' if same else 'NO'}")
    print(goal_line(winner.name, scores["B"][winner.name]))


if __name__ == "__main__":
    main()

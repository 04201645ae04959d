"""fusedlr.tune across processes: two workers on one local study, a killed worker resumed, and a
PostgreSQL study on a throwaway server (slow; where Debian's postgresql binaries exist)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

optuna = pytest.importorskip("optuna")

from fusedlr.tune import open_storage  # noqa: E402
from fusedlr.tune.runner import counts_toward_budget, finished  # noqa: E402

TrialState = optuna.trial.TrialState
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _worker(storage, study, trials, *, heartbeat=30, sleep="0.3", cwd, barrier=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), TOY_SLEEP=sleep)
    if barrier:
        env["TOY_BARRIER"] = barrier
    command = [sys.executable, "-m", "fusedlr.tune", "run", "--train", "tune_toy:slow_train", "--storage", storage,
               "--study", study, "--trials", str(trials), "--steps", "40", "--sampler", "random", "--pruner", "none",
               "--families", "fixed,sine,polynomial", "--heartbeat", str(heartbeat), "--no-progress"]  # fmt: skip
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=120):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def _two_workers(storage, tmp_path, trials=8):
    """Two workers started together on a fresh storage (they race to create tables and study)."""
    barrier = str(tmp_path / "barrier")
    workers = [_worker(storage, "shared", trials, sleep="0.25", cwd=tmp_path, barrier=barrier) for _ in range(2)]
    for w in workers:
        _finish(w)
    study = optuna.load_study(study_name="shared", storage=open_storage(storage, heartbeat_interval=None))
    # each worker stops once the study holds `trials` finished trials: at most one more each in flight
    assert trials <= finished(study) <= trials + 1
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2, "both processes ran trials"
    assert len({t.number for t in study.trials}) == len(study.trials)


def test_two_processes_share_one_local_study(tmp_path):
    _two_workers(str(tmp_path / "shared.db"), tmp_path)


def test_a_killed_worker_resumes_without_losing_finished_trials(tmp_path):
    storage = str(tmp_path / "killed.db")
    worker = _worker(storage, "killed", 8, heartbeat=1, sleep="0.4", cwd=tmp_path)
    done = {}
    deadline = time.time() + 90
    observer = open_storage(storage, heartbeat_interval=None)
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            study = optuna.load_study(study_name="killed", storage=observer)
        except KeyError:  # the worker has not created the study yet
            continue
        done = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
        if len(done) >= 3 and any(t.state == TrialState.RUNNING for t in study.get_trials()):
            break
    assert len(done) >= 3, worker.communicate()[0] if worker.poll() is not None else "worker too slow"
    os.kill(worker.pid, signal.SIGKILL)  # mid-trial: no cleanup, no chance to record anything
    worker.wait()
    study = optuna.load_study(study_name="killed", storage=observer)
    interrupted = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    done = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert interrupted and len(done) >= 3

    time.sleep(2.5)  # past the grace period (2 heartbeats): the dead worker's trial is now stale
    _finish(_worker(storage, "killed", 8, heartbeat=1, sleep="0.05", cwd=tmp_path))
    study = optuna.load_study(study_name="killed", storage=open_storage(storage, heartbeat_interval=None))
    after = {t.number: t for t in study.trials}
    for number, value in done.items():  # nothing finished was lost or redone
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    for number in interrupted:  # failed by Optuna's heartbeat, then retried with the same policy
        assert after[number].state == TrialState.FAIL and not counts_toward_budget(after[number])
        retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        assert retry[0].params == after[number].params
    assert finished(study) == 8


def _postgres_binaries():
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            yield os.path.dirname(os.path.realpath(found))
    for version in ("17", "16", "15", "14", "13"):
        path = f"/usr/lib/postgresql/{version}/bin"
        if os.path.exists(os.path.join(path, "initdb")):
            yield path


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a temp dir, listening on a unix socket only."""
    pytest.importorskip("psycopg2")
    bindir = next(iter(_postgres_binaries()), None)
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    as_user = []
    root = tempfile.mkdtemp(prefix="fusedlr-pg-", dir="/tmp")
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres account
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' account to run the server as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), "54329"
    run = lambda *args: subprocess.run(as_user + list(args), check=True, capture_output=True, text=True)  # noqa: E731
    run(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
    options = f"-k {root} -c listen_addresses='' -p {port} -F"
    run(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w", "start")
    try:
        run(os.path.join(bindir, "createdb"), "-h", root, "-p", port, "-U", "postgres", "tune")
        yield f"postgresql+psycopg2://postgres@/tune?host={root}&port={port}"
    finally:
        subprocess.run(as_user + [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_a_postgresql_study(postgres_url, tmp_path):
    """Optuna's distributed mode: every worker (here two processes) points at one database URL."""
    _two_workers(postgres_url, tmp_path, trials=8)

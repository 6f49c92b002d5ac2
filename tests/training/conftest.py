import pytest
import torch

import seqbert.training.checkpoint as checkpoint


def pytest_configure(config):
    config.addinivalue_line("markers", "real_fsync: keep the real fsync in this test")


@pytest.fixture(autouse=True)
def _skip_fsync(request, monkeypatch):
    """In-process tests skip fsync: it costs 0.05-0.5 s per file on a busy shared disk, and durability cannot
    be observed without cutting the power anyway. `test_atomic_write_fsyncs_files_and_directories` checks the
    calls; the subprocess tests (test_resume, test_ddp) run the real thing."""
    if "real_fsync" not in request.keywords:
        monkeypatch.setattr(checkpoint, "_fsync", lambda path: None)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from two, and on a shared 2-core machine OpenMP's
    spinning threads make these tests ~5x slower in wall-clock time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

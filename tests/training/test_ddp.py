"""Two CPU processes (gloo) train with DistributedDataParallel and end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from h2aseg.synth import write_cohort


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, run: str, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    from test_trainer import tiny_config  # tests/training is on sys.path (pytest's rootdir insertion)

    from h2aseg.training.trainer import train

    result = train(tiny_config(Path(root), epochs=1), run, progress=False)
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_identical_weights(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    write_cohort(root, 6, "autopet-nnunet", seed=5, shape=(40, 40, 48), spacing=(10.0, 10.0, 12.0))
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(root), str(tmp_path / "run"), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (tmp_path / "run" / "finished.json").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "rank1").exists()

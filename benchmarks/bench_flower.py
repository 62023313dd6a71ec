"""Per-round overhead of fltrain on a local Flower federation against the in-process run, and bytes per client.

Both runs use the reference plan (examples/mnist_reference.toml: 4 clients, the 26,010-parameter tanh CNN,
record-level DP at q = 0.01) with ``--rounds`` rounds of ``--local-steps`` local steps (defaults 3 and 50: the
reference's 500 steps would make the benchmark last an hour on a shared machine while the overhead, which does
not depend on the step count, stays the same).  Reported per round (median over the rounds):

- ``inprocess_s``: the round's wall time in ``fltrain run`` (the four clients trained one after the other in
  one process, vectorised);
- ``flower_s``: the round's wall time measured by the ServerApp, from charging the round to its checkpoint, with
  one SuperNode per client (separate processes on 127.0.0.1, each message handled by a fresh ClientApp process);
- ``overhead_s``: their difference (start-up of the ClientApp processes, serialisation, transport, polling);
- ``bytes_down`` / ``bytes_up``: the bytes of the train message a client receives and of its reply, counted as
  Flower ships them (the serialised objects of the message: parameters as one float32 array, the round's
  settings), i.e. without HTTP framing.

Timings come with the load average (the machine is shared): compare figures measured in the same run only.

    PYTHONPATH=. python benchmarks/bench_flower.py --data-dir ../shared/data [--rounds 3 --local-steps 50]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from flwr.app import Message, MessageType  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fltrain.config import RunConfig, load_toml  # noqa: E402
from fltrain.flower.appdir import flower_run_config  # noqa: E402
from fltrain.flower.launcher import LocalFederation  # noqa: E402
from fltrain.flower.records import train_content, train_reply_content  # noqa: E402
from fltrain.flower.server_app import train_instructions  # noqa: E402
from fltrain.models import ParamLayout, build_model  # noqa: E402
from fltrain.privacy import build_mode  # noqa: E402
from fltrain.run import METRICS, run  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "mnist_reference.toml"


def message_bytes(message: Message) -> int:
    """Bytes of the serialised objects Flower ships for ``message`` (the message, its records and arrays)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def sizes(cfg: RunConfig) -> tuple[int, int, int]:
    """(bytes of a client's train message, bytes of its reply, parameters) for the run ``cfg`` (a round's real
    content)."""
    model = build_model(cfg.resolved_model, (1, 28, 28))
    layout = ParamLayout.of(model)
    mode = build_mode(cfg, dim=layout.size, train_records=60_000)
    params = layout.flatten(dict(model.named_parameters())).detach()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    down = Message(train_content(params, train_instructions(mode, 1, cfg.lr)), dst_node_id=2,
                   message_type=MessageType.TRAIN)
    down.metadata.__dict__["_message_id"] = down.object_id
    up = Message(train_reply_content(torch.zeros_like(params)), reply_to=down)
    return message_bytes(down), message_bytes(up), layout.size


def round_seconds(out: Path) -> list[float]:
    return [json.loads(line)["seconds"] for line in (out / METRICS).read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=50)
    args = parser.parse_args()
    values = {**load_toml(REFERENCE), "rounds": args.rounds, "local-steps": args.local_steps,
              "data-dir": str(Path(args.data_dir).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        inprocess, flower = Path(tmp) / "inprocess", Path(tmp) / "flower"
        load = [os.getloadavg()[0]]
        began = time.perf_counter()
        cfg = RunConfig.from_dict({**values, "out": str(inprocess)})
        run(cfg)
        inprocess_total = time.perf_counter() - began
        load.append(os.getloadavg()[0])
        began = time.perf_counter()
        with LocalFederation(nodes=cfg.clients, partitions=cfg.clients, data_dir=Path(args.data_dir),
                             workdir=flower / "flower") as federation:
            started = time.perf_counter() - began
            federation.run(flower_run_config({**values, "out": str(flower)}))
        flower_total = time.perf_counter() - began
        load.append(os.getloadavg()[0])
        a, b = round_seconds(inprocess), round_seconds(flower)
    down, up, dim = sizes(cfg)
    result = {
        "rounds": args.rounds, "local_steps": args.local_steps, "clients": cfg.clients,
        "inprocess_s": statistics.median(a), "flower_s": statistics.median(b),
        "overhead_s": statistics.median(b) - statistics.median(a),
        "inprocess_total_s": round(inprocess_total, 1), "flower_total_s": round(flower_total, 1),
        "flower_startup_s": round(started, 1), "bytes_down": down, "bytes_up": up,
        "params": dim, "loadavg_1min": load,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

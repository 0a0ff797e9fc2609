"""benchmarks/view_floor.py: the decomposition of a CPU view's time runs and adds up."""

import importlib.util
import json
import pathlib
import shlex
import shutil
import sysconfig

import pytest

torch = pytest.importorskip("torch")

SCRIPT = pathlib.Path(__file__).parent.parent / "benchmarks" / "view_floor.py"
compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
pytestmark = [
    pytest.mark.skipif(shutil.which(compiler) is None, reason=f"no C compiler ({compiler})"),
    pytest.mark.skipif(not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"),
                       reason="this torch has no DLPack C exchange API (torch < 2.10)"),
]


def test_the_parts_add_up_to_the_floor(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("view_floor", SCRIPT)
    view_floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(view_floor)
    path = tmp_path / "floor.json"
    assert view_floor.main(["--calls", "2000", "--repeats", "2", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    ns = report["ns_per_call"]
    parts = ["torch: exchange-API read", "torch: t.is_neg()", "torch: t.untyped_storage()",
             "NumPy: the view array"]
    assert all(ns[name] > 0 for name in ["t.numpy()", "tb.to_numpy(t)", *parts])
    assert ns["the four together: the floor"] == pytest.approx(sum(ns[name] for name in parts))
    assert ns["tensorbridge's own, at most"] == pytest.approx(
        ns["tb.to_numpy(t)"] - ns["the four together: the floor"])
    assert report["ratio_to_t_numpy"]["t.numpy()"] == 1.0
    shown = capsys.readouterr().out
    assert all(name in shown for name in ns)

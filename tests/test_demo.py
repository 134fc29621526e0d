"""The README's demo path (planted data -> MMSA_run khar and tfn -> results table), shrunk; its
fresh run folders, its curves and its check against the numbers it recorded."""
import pandas as pd
import pytest

from khar_mmsa import demo as demo_mod
from khar_mmsa.demo import DEMO_EXPECTED, DemoRun, check_expected, new_run_folder, run_demo

SMALL = dict(epochs=1, pretrain_epochs=1, modal_dim=16, encoder_heads=2, adapter_heads=2,
             encoder_layers=1, expert_hidden_dim=16, batch_size=8)


#: TFN shrunk as KHaR is: at MMSA's mosi widths its fusion layer alone has 35M parameters.
SMALL_TFN = dict(demo_mod.TFN_DEMO_CONFIG, early_stop=1, hidden_dims=[16, 8, 16], text_out=16, post_fusion_dim=16)


def test_demo_runs_khar_beside_tfn_in_a_fresh_run_folder(tmp_path, tiny_bert, fast_mmsa, monkeypatch):
    monkeypatch.setattr(demo_mod, "TFN_DEMO_CONFIG", SMALL_TFN)
    (tmp_path / "run-1" / "results").mkdir(parents=True)  # an earlier run stays as it is
    demo = run_demo(tmp_path, seeds=[1], encoder=tiny_bert, sizes=(16, 8, 8), seq_lens=(8, 10, 12),
                    khar_config=SMALL)
    assert demo.run_dir == tmp_path / "run-2"
    table = demo.table
    assert table["Model"].tolist() == ["khar", "tfn"]          # this run's rows only, not appended
    assert table["run"].tolist() == ["run-2", "run-2"]          # each row says its run
    assert table["MAE"].notna().all() and table["Mult_acc_7"].between(0, 100).all()
    assert (demo.run_dir / "results" / "normal" / "mosi.csv").is_file()
    assert not any((tmp_path / "run-1" / "results").iterdir())
    assert demo.curves == demo.run_dir / "logs" / "khar-mosi-curves.png"
    assert demo.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_folders_count_up_and_never_reuse_one(tmp_path):
    assert new_run_folder(tmp_path) == tmp_path / "run-1"
    (tmp_path / "run-7").mkdir()
    (tmp_path / "run-notes").mkdir()
    assert [new_run_folder(tmp_path).name for _ in range(2)] == ["run-8", "run-9"]


def _table(**overrides):
    rows = []
    for model, metrics in DEMO_EXPECTED.items():
        row = {"run": "run-1", "Model": model, "seeds": "1111"}
        row.update({metric: want for metric, (want, _) in metrics.items()})
        row.update(overrides.get(model, {}))
        rows.append(row)
    return pd.DataFrame(rows)


def test_check_passes_within_tolerance_and_names_what_moved():
    assert check_expected(_table()) == []
    want, tol = DEMO_EXPECTED["khar"]["MAE"]
    assert check_expected(_table(khar={"MAE": want + 0.9 * tol})) == []
    problems = check_expected(_table(khar={"MAE": want + 1.1 * tol}))
    assert len(problems) == 1 and problems[0].startswith("khar MAE")
    assert check_expected(_table(tfn={"Corr": float("nan")})) == [
        f"tfn Corr = nan, recorded {DEMO_EXPECTED['tfn']['Corr'][0]:.2f} ± {DEMO_EXPECTED['tfn']['Corr'][1]:.1f}"]


@pytest.mark.parametrize("shift, status", [(0.0, 0), (100.0, 1)])
def test_demo_command_exits_non_zero_when_its_numbers_move(tmp_path, monkeypatch, caplog, shift, status):
    want = DEMO_EXPECTED["khar"]["MAE"][0]

    def fake_run_demo(out):
        run_dir = tmp_path / "run-1"
        return DemoRun(run_dir, _table(khar={"MAE": want + shift}), run_dir / "logs" / "c.png", 0.2, 1.0)
    monkeypatch.setattr(demo_mod, "run_demo", fake_run_demo)
    demo_mod.logger.addHandler(caplog.handler)  # the demo's logger does not propagate
    try:
        assert demo_mod.main(["--out", str(tmp_path)]) == status
    finally:
        demo_mod.logger.removeHandler(caplog.handler)
    assert ("DEMO CHECK FAILED" in caplog.text) == bool(status)


def test_demo_command_prints_its_table_on_stdout_and_its_help_names_it(tmp_path, monkeypatch, capsys):
    """``python -m khar_mmsa.demo > file`` keeps the results table (x100 named); ``--help`` says what
    the demo is, not "the README's first command"."""
    run_dir = tmp_path / "run-1"
    monkeypatch.setattr(demo_mod, "run_demo", lambda out: DemoRun(run_dir, _table(), run_dir / "c.png", 0.2, 1.0))
    assert demo_mod.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MMSA results, metrics x100") and "khar" in out and "tfn" in out
    assert f"{DEMO_EXPECTED['khar']['MAE'][0]:.2f}" in out
    with pytest.raises(SystemExit):
        demo_mod.main(["--help"])
    help_text = capsys.readouterr().out
    assert "first command" not in help_text and "KHaR beside MMSA's TFN" in help_text

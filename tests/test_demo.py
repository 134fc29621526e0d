"""The README's demo path (planted data -> MMSA_run khar and tfn -> results table), shrunk."""
from khar_mmsa.demo import run_demo


def test_demo_runs_khar_beside_tfn(tmp_path, tiny_bert, fast_mmsa):
    small = dict(epochs=1, pretrain_epochs=1, modal_dim=16, encoder_heads=2, adapter_heads=2,
                 encoder_layers=1, expert_hidden_dim=16, batch_size=8)
    table = run_demo(tmp_path, seeds=[1], encoder=tiny_bert, sizes=(16, 8, 8), seq_lens=(8, 10, 12),
                     khar_config=small)
    assert table["Model"].tolist() == ["khar", "tfn"]
    assert table["MAE"].notna().all() and table["Mult_acc_7"].between(0, 100).all()
    assert (tmp_path / "results" / "normal" / "mosi.csv").is_file()

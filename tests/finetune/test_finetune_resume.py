"""A state-tuning run interrupted while saving step 4 and resumed from its step-2 checkpoint logs exactly
what an uninterrupted run logs (every step, those logged twice across the interruption included) and ends
with bit-equal trained tensors: ``experiments/check_finetune_resume.py`` on the smallest fixture model."""

from tests.conftest import load_experiment, shared_path


def test_interrupted_state_tuning_resumes_exactly(tmp_path, capsys):
    base = shared_path("fixtures", "tiny-rwkv", "tiny-rwkv-4v0-660K.pth")
    check = load_experiment("check_finetune_resume")
    code = check.main([str(base), "--method", "state", "--workdir", str(tmp_path)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (
        "state: resumed from step 2; every logged value equal: True; final parameters bit-equal: True"
    )
    assert code == 0

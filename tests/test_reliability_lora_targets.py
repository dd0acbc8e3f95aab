"""LoRA target modules: names or patterns of a safe grammar, matched in linear time.

The pattern ``([a-z_.0-9]+)+!`` hung peft's regular-expression match for minutes. Targets are
now parsed by ``tskd.lora_targets``; nested quantifiers, backreferences and lookarounds are
refused in one line wherever a target comes from (YAML config, meta.json, code), the defaults
select exactly the layers they selected before, and peft only receives exact layer names.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from tskd.config import LoraSettings, load_config
from tskd.errors import TskdError, TskdInputError
from tskd.lora_targets import MAX_TARGET_CHARS, check_targets, matching_modules, parse_target
from tskd.models.lora import apply_lora, is_lora, load_teacher, lora_modules, save_teacher
from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
from tskd.models.mini_sam_files import save_mini_sam
from tskd.models.teacher import SemanticSam, build_sam

REDOS = "([a-z_.0-9]+)+!"
DEFAULTS = LoraSettings().targets
LINEAR = (torch.nn.Linear, torch.nn.Conv2d)


@pytest.fixture(scope="module")
def names() -> list[str]:
    """Every module name of the default mini SAM and of the tiny test SAM."""
    out: list[str] = []
    for cfg in (MiniSamConfig(), MiniSamConfig.tiny()):
        out += [n for n, _ in build_mini_sam(cfg, 64).named_modules() if n]
    return out


def _seconds(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- refusals

UNSAFE = [
    (REDOS, "the group at position 0 is repeated by '+' (a nested quantifier"),
    ("(a+)+b", "repeated by '+'"),
    ("(a|aa)*c", "repeated by '*'"),
    (r"(?:\w+\.)*qkv", "repeated by '*'"),
    ("(qkv){2}", "repeated by '{'"),
    (r"(attn)\.\1", "the backreference '\\1' at position 8"),
    (r"\bqkv", "the escape '\\b'"),
    (r"\x71kv", "the escape '\\x'"),
    ("(?=q)qkv", "'(?' at position 0 starts a lookaround"),
    ("(?P<n>qkv)", "'(?' at position 0"),
    ("(?i)QKV", "'(?' at position 0"),
    ("a**", "follows another one"),
    ("a+?", "follows another one"),
    ("*qkv", "'*' at position 0 repeats nothing"),
    ("(qkv", "is not closed"),
    ("qkv)", "unmatched ')'"),
    ("[a-z", "is not closed"),
    ("[z-a]", "is reversed"),
    ("a{99}", "m <= n <= 64"),
    ("a{,3}", "does not start a {m} or {m,n}"),
    ("q$kv", "is an anchor"),
    ("qkv\\", "lone backslash"),
]


@pytest.mark.parametrize("pattern,reason", UNSAFE, ids=[p for p, _ in UNSAFE])
def test_unsafe_patterns_are_refused_in_one_line(pattern: str, reason: str) -> None:
    with pytest.raises(TskdInputError) as info:
        parse_target(pattern, "LoRA target")
    message = str(info.value)
    assert message.startswith(f"LoRA target '{pattern}' is not a safe pattern: ")
    assert reason in message and "\n" not in message
    assert message.endswith("see the LoRA target grammar in docs/user-guide.md")


@pytest.mark.parametrize("value,reason", [
    ("", "is empty"), ("   ", "is empty"), (5, "(a string), got 5"), (None, "got None"),
    ("q" * (MAX_TARGET_CHARS + 1), f"{MAX_TARGET_CHARS + 1} characters long"),
    ("qkv\n(a+)+", "'qkv\\n(a+)+'"),  # unprintable characters are shown escaped, on one line
])
def test_targets_that_are_not_patterns_are_refused(value: object, reason: str) -> None:
    with pytest.raises(TskdInputError) as info:
        parse_target(value, "LoRA target")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_target_lists_are_bounded() -> None:
    with pytest.raises(TskdInputError, match="must be a list of module names or patterns"):
        check_targets("qkv")
    with pytest.raises(TskdInputError, match="is empty"):
        check_targets([])
    with pytest.raises(TskdInputError, match="has 65 entries; at most 64"):
        check_targets(["qkv"] * 65)
    with pytest.raises(TskdInputError, match=r"LoRA targets\[1\] '\(a\+\)\+'"):
        check_targets(["qkv", "(a+)+"])


def test_redos_pattern_is_refused_fast_everywhere(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # 1. parsing alone
    assert _seconds(lambda: pytest.raises(TskdInputError, parse_target, REDOS)) < 1.0
    # 2. the user's YAML config: refused when the file is read, naming the key
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"teacher:\n  lora:\n    targets: ['{REDOS}']\n")
    with pytest.raises(TskdInputError) as info:
        load_config(cfg)
    assert str(info.value).startswith(
        f"config: teacher.lora.targets[0] '{REDOS}' is not a safe pattern: the group at "
        "position 0 is repeated by '+'"
    )
    # 3. the CLI: one line, exit code 2, before any data is read or model built
    from tskd.apps.cli import main

    t0 = time.perf_counter()
    code = main(["finetune-teacher", "--config", str(cfg), "--run-dir", str(tmp_path / "run"),
                 "--data", str(tmp_path / "no-data")])
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tskd: error: config: teacher.lora")
    assert not (tmp_path / "run").exists()
    # 4. settings built in code reach apply_lora unchecked: it checks them before peft
    sam = SemanticSam(build_mini_sam(MiniSamConfig.tiny()), 2)
    t0 = time.perf_counter()
    with pytest.raises(TskdInputError, match=r"teacher\.lora\.targets\[0\] '\(\[a-z_"):
        apply_lora(sam, LoraSettings(targets=[REDOS]))
    assert time.perf_counter() - t0 < 1.0
    assert not is_lora(sam)


def test_other_lora_settings_are_checked_in_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    for body, fragment in [
        ("rank: 0", "'teacher.lora.rank' must be an integer from 1 to 1024, got 0"),
        ("alpha: .nan", "'teacher.lora.alpha' must be a number greater than 0"),
        ("dropout: 1.0", "'teacher.lora.dropout' must be a number from 0 to below 1, got 1.0"),
        ("targets: []", "teacher.lora.targets is empty"),
    ]:
        cfg.write_text(f"teacher:\n  lora:\n    {body}\n")
        with pytest.raises(TskdInputError) as info:
            load_config(cfg)
        assert fragment in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- matching


def test_matching_takes_linear_time() -> None:
    # eight stars would make a backtracking engine try ~n^8 splits of a 5000-character name
    target = parse_target(".*.*.*.*.*.*.*.*x")
    name = "a" * 5000
    assert _seconds(lambda: target.matches(name)) < 1.0
    assert target.matches(name) is False and target.matches(name + "x") is True


ALLOWED = [
    *DEFAULTS,
    r".*\.attn\.qkv",
    r"image_encoder\.blocks\.[0-9]+\.attn\.(qkv|proj)",
    r"mask_decoder\.transformer\.layers\.\d\.(self_attn|cross_attn_\w+)\.[qkv]_proj",
    r"^mask_decoder\..*_proj$",
    r"(?:image_encoder|mask_decoder)\..*\.lin[12]",
    r"image_encoder\.blocks\.\d{1,2}\.mlp\.lin1",
    r"[^.]+\.neck\.[02]",
    r"mask_decoder\.iou_prediction_head\.layers\.\d?",
]


@pytest.mark.parametrize("pattern", ALLOWED)
def test_safe_patterns_match_exactly_what_python_re_matches(pattern: str,
                                                            names: list[str]) -> None:
    target = parse_target(pattern)
    assert not target.is_name
    expected = [n for n in names if re.fullmatch(pattern, n)]
    assert expected, "the pattern should select something in SAM"
    assert [n for n in names if target.matches(n)] == expected


def test_names_follow_peft_rule(names: list[str]) -> None:
    qkv = [n for n in names if n.endswith(".attn.qkv")]
    assert len(qkv) == 8 + 2  # default mini (8 blocks) and tiny (2 blocks)
    assert matching_modules(names, ["qkv"]) == qkv
    assert matching_modules(names, ["attn.qkv"]) == qkv
    assert matching_modules(names, ["image_encoder.blocks.0.attn.qkv"]) == [
        "image_encoder.blocks.0.attn.qkv", "image_encoder.blocks.0.attn.qkv"]
    assert matching_modules(names, ["kv"]) == []  # a name matches whole parts only
    assert parse_target("blocks.0.attn.qkv").is_name


def test_default_targets_give_the_same_adapter_as_before(tmp_path: Path) -> None:
    """Adapters saved before this change hold the same LoRA tensors, so they keep loading."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    sam = build_mini_sam(MiniSamConfig.tiny())
    old = get_peft_model(build_mini_sam(MiniSamConfig.tiny()), LoraConfig(
        r=2, target_modules="|".join(f"(?:{t})" for t in DEFAULTS), bias="none"))
    settings = LoraSettings(rank=2, alpha=4.0)
    new = apply_lora(SemanticSam(sam, 3), settings)
    old_lora = sorted(n for n, _ in old.named_parameters() if "lora_" in n)
    new_lora = sorted(n.removeprefix("sam.") for n, p in new.named_parameters() if "lora_" in n)
    assert new_lora == old_lora and len(new_lora) == 2 * (2 + 8)  # 2 qkv, 8 decoder q/v_proj
    layers = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
                    for n in old_lora if n.endswith("lora_A.default.weight"))
    assert sorted(lora_modules(build_mini_sam(MiniSamConfig.tiny()), settings)) == layers


def test_name_targets_train_save_and_reload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = save_mini_sam(build_mini_sam(MiniSamConfig.tiny()), MiniSamConfig.tiny(),
                         tmp_path / "base.safetensors", half=False)
    settings = LoraSettings(rank=2, alpha=4.0, targets=["attn.qkv", r".*\.out_proj"])
    model = apply_lora(SemanticSam(build_sam("mini", base, 64), 2),
                               settings)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x)
    save_teacher(model, tmp_path / "t", {"lora": settings})
    loaded = load_teacher(tmp_path / "t")
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_targets_matching_no_layer_are_refused_in_one_line() -> None:
    sam = SemanticSam(build_mini_sam(MiniSamConfig.tiny()), 2)
    # 'attn' names attention blocks, which hold layers but are not layers LoRA can adapt
    with pytest.raises(TskdError) as info:
        apply_lora(sam, LoraSettings(targets=["attn", "no_such_layer"]))
    assert str(info.value).startswith(
        "LoRA targets ['attn', 'no_such_layer'] match no linear or convolution layer of SAM; "
    )
    assert "\n" not in str(info.value) and not is_lora(sam)


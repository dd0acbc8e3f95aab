"""The teacher widget refuses unsafe LoRA target patterns at once, in one line (needs a display)."""

from __future__ import annotations

import time

import pytest

from tskd.errors import TskdInputError

REDOS = "([a-z_.0-9]+)+!"


@pytest.mark.gui
@pytest.mark.usefixtures("tskd_gui_env")
def test_teacher_widget_refuses_unsafe_targets(make_napari_viewer) -> None:  # noqa: ANN001
    from napari_tskd._teacher_widget import TeacherWidget

    t = TeacherWidget(make_napari_viewer())
    t.lora_targets.value = f"qkv; {REDOS}"
    t0 = time.perf_counter()
    with pytest.raises(TskdInputError) as info:
        t.build_config()
    assert time.perf_counter() - t0 < 1.0
    assert str(info.value).startswith(f"LoRA targets[1] '{REDOS}' is not a safe pattern: ")
    t.lora_targets.value = "attn.qkv; mask_decoder\\.transformer\\..*(q_proj|v_proj)"
    assert t.build_config().teacher.lora.targets == [
        "attn.qkv", "mask_decoder\\.transformer\\..*(q_proj|v_proj)"]

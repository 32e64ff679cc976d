"""kyc_tools.eval.pad_study.edge_cues (an evaluated, not kept, passive candidate): a border drawn around
a face box is found on its sides; a plain frame and lines that cross the face are not counted."""
from __future__ import annotations

import cv2
import numpy as np

from kyc_tools.eval.pad_study import edge_cues

BOX = (140.0, 90.0, 180.0, 130.0)      # a 40 px face in a 320x240 frame


def frame(grey=128):
    return np.full((240, 320, 3), grey, np.uint8)


def test_a_border_around_the_face_is_found_on_its_sides():
    f = frame()
    cv2.rectangle(f, (80, 20), (240, 225), (20, 20, 20), 3)         # a phone's bezel around the face
    c = edge_cues(f, BOX)
    assert c["edge_sides"] >= 3 and c["edge_lr"] == 1.0 and c["edge_len"] > 4.0, c


def test_a_plain_frame_and_lines_through_the_face_give_nothing():
    assert edge_cues(frame(), BOX) == {"edge_sides": 0.0, "edge_lr": 0.0, "edge_len": 0.0}
    f = frame()
    cv2.line(f, (160, 0), (160, 239), (10, 10, 10), 3)              # through the face: not beside it
    cv2.line(f, (0, 5), (319, 5), (10, 10, 10), 3)                  # above the face: one side at most
    c = edge_cues(f, BOX)
    assert c["edge_lr"] == 0.0 and c["edge_sides"] <= 1.0, c
    f = frame()
    cv2.line(f, (20, 30), (300, 230), (10, 10, 10), 3)              # diagonal: not a border
    assert edge_cues(f, BOX)["edge_sides"] == 0.0

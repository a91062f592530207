"""The box-offset codec against hand computations."""
import numpy as np
import torch

from datamodules.codecs.box_offsets import (box_iou, decode_boxes, decode_landmarks, encode_boxes,
                                            encode_landmarks, square_boxes)


def test_encode_boxes_by_hand_and_round_trip():
    window = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # w 20, h 40
    box = torch.tensor([[12.0, 16.0, 33.0, 70.0]])
    offsets = encode_boxes(window, box)
    assert torch.allclose(offsets, torch.tensor([[2 / 20, -4 / 40, 3 / 20, 10 / 40]]))
    assert torch.allclose(decode_boxes(window, offsets), box)


def test_landmarks_by_hand_and_flat_network_output():
    window = np.array([[0.0, 0.0, 10.0, 20.0]])
    points = np.array([[[5.0, 5.0], [10.0, 20.0]]])
    encoded = encode_landmarks(window, points)
    assert torch.allclose(encoded, torch.tensor([[[0.5, 0.25], [1.0, 1.0]]]))
    assert torch.allclose(decode_landmarks(window, encoded.reshape(1, 4)), torch.tensor(points).float())


def test_iou_by_hand_and_square():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 8.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 0.0]]))
    assert torch.allclose(square_boxes(torch.tensor([[0.0, 0.0, 10.0, 4.0]])), torch.tensor([[0.0, -3.0, 10.0, 7.0]]))

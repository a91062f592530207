"""insightface RecordIO: on-disk layout, reading (header record, multi-label, multi-part), conversion."""
import json
import struct
import warnings

import numpy as np
import pytest
import webdataset as wds

from datamodules.converters import read_conversion_report
from datamodules.converters.recordio import (RecordIOError, RecordIOReader, convert_recordio, encode_record,
                                             insightface_layout, pack_payload, unpack_payload, write_recordio)
from datamodules.shards import encode_image, read_index

MAGIC = struct.pack("<I", 0xCED7230A)


def lrec(cflag, length):
    return struct.pack("<I", (cflag << 29) | length)


def test_record_layout_written_by_hand():
    payload = b"0123456789"  # 10 bytes: one whole record, padded by 2 zero bytes
    assert encode_record(payload) == MAGIC + lrec(0, 10) + payload + b"\0\0"
    aligned = b"ABCD" + MAGIC + b"EFGHIJ"  # magic at offset 4: split into a first and a last part
    assert encode_record(aligned) == MAGIC + lrec(1, 4) + b"ABCD" + MAGIC + lrec(3, 6) + b"EFGHIJ" + b"\0\0"
    twice = MAGIC + MAGIC + b"xy"  # magic at 0 and 4: first part empty, middle part empty, last part "xy"
    assert encode_record(twice) == MAGIC + lrec(1, 0) + MAGIC + lrec(2, 0) + MAGIC + lrec(3, 2) + b"xy\0\0"
    unaligned = b"AB" + MAGIC + b"CD"  # magic at offset 2 is not a split point
    assert encode_record(unaligned) == MAGIC + lrec(0, 8) + unaligned


def test_payload_header_struct():
    image = b"\xff\xd8\xffjpegdata"
    single = pack_payload(7, image, id=3, id2=4)
    assert single == struct.pack("<IfQQ", 0, 7.0, 3, 4) + image
    multi = pack_payload([5.0, 9.0], image)
    assert multi == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 5.0, 9.0) + image
    record = unpack_payload(multi)
    assert record.labels == (5.0, 9.0) and record.label == 5.0 and record.image == image
    with pytest.raises(ValueError, match="labels"):
        unpack_payload(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def make_jpeg(seed):
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, size=(24 + seed % 5, 20, 3), dtype=np.uint8))


@pytest.fixture
def samples():
    """30 (identity, jpeg) sorted by identity; sample 7 carries the magic number at aligned positions."""
    identities = sorted([i % 6 for i in range(30)])
    images = [make_jpeg(i) for i in range(30)]
    jpeg = images[7]
    images[7] = jpeg + b"\0" * (-len(jpeg) % 4) + MAGIC + b"tail" + MAGIC + MAGIC + b"end"
    return list(zip(identities, images))


def write_insightface_rec(tmp_path, samples):
    records = insightface_layout(samples)
    key, label, image = records[12]  # image key 12 becomes a multi-label (flag = 2) record
    records[12] = (key, [label, 99.0], image)
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, records)
    return rec, idx


def test_insightface_layout_header_and_identity_records(samples):
    records = insightface_layout(samples)
    assert records[0] == (0, (31.0, 37.0), b"")  # label[0] = images + 1, label[1] = end of identity records
    identity_records = records[31:]
    assert [key for key, _, _ in identity_records] == list(range(31, 37))
    assert identity_records[0][1] == (1.0, 6.0)  # identity 0: image keys [1, 6)


def test_reader_reads_every_image_and_label(tmp_path, samples):
    rec, idx = write_insightface_rec(tmp_path, samples)
    lines = idx.read_text().splitlines()
    assert len(lines) == 1 + 30 + 6 and lines[0] == "0\t0" and all("\t" in line for line in lines)
    with RecordIOReader(rec, idx) as reader:
        assert reader.header == (31, 37)
        assert len(reader) == 30 and reader.keys == list(range(1, 31))
        got = list(reader)
        assert [(key, label, image) for key, label, image in got] == \
            [(key, identity, image) for key, (identity, image) in enumerate(samples, start=1)]
        assert reader.read(8) == (samples[7][0], samples[7][1])  # the multi-part record, random access
        assert reader.read_record(12).labels == (float(samples[11][0]), 99.0)
        assert reader.read(12)[0] == samples[11][0]  # multi-label: the first label
        assert reader.read_record(31).labels == (1.0, 6.0)


def test_multipart_record_is_really_split_on_disk(tmp_path, samples):
    rec, idx = write_insightface_rec(tmp_path, samples)
    offsets = dict(map(int, line.split("\t")) for line in idx.read_text().splitlines())
    data = rec.read_bytes()
    first_lrec = struct.unpack_from("<I", data, offsets[8] + 4)[0]
    assert first_lrec >> 29 == 1  # the record holding the magic starts as a first part


def test_headerless_file_reads_every_key(tmp_path):
    rec, idx = tmp_path / "plain.rec", tmp_path / "plain.idx"
    images = [make_jpeg(i) for i in range(4)]
    write_recordio(rec, idx, [(k, k % 2, img) for k, img in enumerate(images)])
    reader = RecordIOReader(rec)  # .idx found beside the .rec
    assert reader.header is None and reader.keys == [0, 1, 2, 3]
    assert list(reader) == [(k, k % 2, img) for k, img in enumerate(images)]


def read_shards(index_path):
    index = read_index(index_path.parent)
    dataset = wds.WebDataset(index.urls, shardshuffle=False)
    return {s["__key__"]: (s.get("jpg"), json.loads(s["json"])) for s in dataset}


def test_convert_round_trip_through_shards(tmp_path, samples):
    rec, _ = write_insightface_rec(tmp_path, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        index_path = convert_recordio(tmp_path, tmp_path / "shards", max_samples=8)
    index = read_index(index_path.parent)
    assert index.num_samples == 30 and index.num_identities == 6 and len(index.urls) == 4
    got = read_shards(index_path)
    assert len(got) == 30
    for key, (identity, image) in enumerate(samples, start=1):
        data, annotation = got[f"{key:09d}"]
        assert data == image  # bytes passed through
        assert annotation["identity"] == identity
    report = read_conversion_report(index_path.parent)
    assert report["written"] == 30 and report["skipped"] == {}


def corrupt(rec, offset, new_bytes):
    data = bytearray(rec.read_bytes())
    data[offset:offset + len(new_bytes)] = new_bytes
    rec.write_bytes(bytes(data))


def test_corrupt_records_raise_in_reader_and_are_counted_by_converter(tmp_path, samples):
    rec, idx = write_insightface_rec(tmp_path, samples)
    offsets = dict(map(int, line.split("\t")) for line in idx.read_text().splitlines())
    corrupt(rec, offsets[5], b"\xde\xad\xbe\xef")  # bad magic at image key 5
    first_length = struct.unpack_from("<I", rec.read_bytes(), offsets[8] + 4)[0] & ((1 << 29) - 1)
    second_part = offsets[8] + 8 + first_length
    corrupt(rec, second_part + 4, lrec(1, 4))  # the multi-part record's 2nd part claims to start a record
    corrupt(rec, offsets[20] + 4, lrec(0, 1 << 28))  # length runs past the end of the file
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(RecordIOError, match=rf"record key 5 at offset {offsets[5]}: bad magic"):
            reader.read(5)
        with pytest.raises(RecordIOError, match=rf"record key 20 at offset {offsets[20]}: truncated"):
            reader.read(20)
        with pytest.raises(RecordIOError, match="record key 8 .*continuation flag"):
            reader.read(8)
    with pytest.warns(UserWarning, match="skipped 3"):
        index_path = convert_recordio((rec, idx), tmp_path / "shards")
    report = read_conversion_report(index_path.parent)
    assert report["written"] == 27 and report["skipped"] == {"corrupt_record": 3}
    assert any("record key 5" in message for message in report["examples"])
    assert set(read_shards(index_path)) == {f"{k:09d}" for k in range(1, 31) if k not in (5, 8, 20)}


def test_truncated_file_and_missing_keys(tmp_path, samples):
    rec, idx = write_insightface_rec(tmp_path, samples)
    offsets = dict(map(int, line.split("\t")) for line in idx.read_text().splitlines())
    rec.write_bytes(rec.read_bytes()[:offsets[30] + 20])  # cut inside image key 30 (and the identity records)
    lines = [line for line in idx.read_text().splitlines() if not line.startswith("3\t")]  # drop key 3
    idx.write_text("\n".join(lines) + "\n")
    with RecordIOReader(rec, idx) as reader:
        assert reader.missing_keys == [3] and 3 not in reader.keys
        with pytest.raises(RecordIOError, match="record key 30 .*truncated"):
            reader.read(30)
    with pytest.warns(UserWarning):
        index_path = convert_recordio(rec, tmp_path / "shards")
    report = read_conversion_report(index_path.parent)
    assert report["written"] == 28 and report["skipped"] == {"corrupt_record": 1, "missing_record": 1}


def test_bad_index_line_names_the_line(tmp_path):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    write_recordio(rec, idx, [(0, 1, make_jpeg(0))])
    idx.write_text("0\t0\nnot-a-line\n")
    with pytest.raises(RecordIOError, match="line 2"):
        RecordIOReader(rec, idx)


def test_non_integer_label_is_an_error(tmp_path):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    write_recordio(rec, idx, [(0, 1.5, make_jpeg(0))])
    with pytest.raises(RecordIOError, match="not an integer"):
        RecordIOReader(rec, idx).read(0)

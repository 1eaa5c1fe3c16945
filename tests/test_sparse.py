"""The offset-CSR encoder/decoder (docs/operator-contract.md section 2)."""
import numpy as np
import pytest

from mam_tf.deploy.offset_csr import MAX_ROW_ENTRIES, OffsetCSR, encode


def _naive_encode(w):
    """The contract's pseudo-code, row by row, as an independent oracle."""
    values, offsets, counts = [], [], []
    for row in w:
        prev, n0 = -1, len(values)
        for c in np.flatnonzero(row):
            gap = c - prev - 1
            while gap > 255:
                values.append(0)
                offsets.append(255)
                prev += 256
                gap -= 256
            values.append(int(row[c]))
            offsets.append(int(gap))
            prev = c
        counts.append(len(values) - n0)
    return values, offsets, counts


def _random_matrix(rng, m, n, density):
    w = rng.integers(-128, 128, size=(m, n)).astype(np.int8)
    w[rng.random((m, n)) >= density] = 0
    return w


def test_golden_encoding_by_hand():
    w = np.zeros((3, 1000), np.int8)
    w[0, 0], w[0, 256], w[0, 999] = 5, -3, 1
    w[2, 600] = 7
    csr = encode(w)
    # row 0: col 0 (gap 0); col 256 (gap 255); col 999: gap 742 = 2*256 + 230 -> two dummies
    # row 1: empty; row 2: col 600: gap 600 = 2*256 + 88 -> two dummies
    assert csr.values.tolist() == [5, -3, 0, 0, 1, 0, 0, 7]
    assert csr.offsets.tolist() == [0, 255, 255, 255, 230, 255, 255, 88]
    assert csr.row_counts.tolist() == [5, 0, 3]
    assert csr.values.dtype == np.int8 and csr.offsets.dtype == np.uint8
    assert csr.row_counts.dtype == np.int16
    assert csr.shape == (3, 1000)
    assert csr.num_dummies == 4
    np.testing.assert_array_equal(csr.decode(), w)


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_and_contract_pseudocode_random(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        m = int(rng.integers(1, 20))
        n = int(rng.integers(1, 2000))
        density = float(rng.choice([0.0, 0.001, 0.01, 0.1, 0.5, 1.0, rng.random()]))
        w = _random_matrix(rng, m, n, density)
        csr = encode(w, name="dense_1")
        np.testing.assert_array_equal(csr.decode(), w)
        values, offsets, counts = _naive_encode(w)
        assert csr.values.tolist() == values
        assert csr.offsets.tolist() == offsets
        assert csr.row_counts.tolist() == counts
        csr.check()


@pytest.mark.parametrize("cols", [
    [255], [256], [257], [511], [512], [513], [767], [768],
    [0, 256], [0, 257], [0, 512], [0, 513], [10, 10 + 256 + 256 + 1],
    [0, 1, 2, 3], [0], [1000], [0, 1999], [1999],
])
def test_long_gaps_at_row_start_middle_and_end(cols):
    n = 2000
    w = np.zeros((2, n), np.int8)
    w[1, cols] = 9  # row 0 stays empty
    csr = encode(w)
    np.testing.assert_array_equal(csr.decode(), w)
    decoded = csr.columns()
    real = decoded[csr.values != 0]
    assert real.tolist() == sorted(cols)
    # one entry per column plus floor(gap / 256) dummies per gap; nothing after the last
    gaps = np.diff([-1] + sorted(cols)) - 1
    assert int(csr.row_counts[1]) == len(cols) + int((gaps // 256).sum())
    assert int(csr.row_counts[0]) == 0
    assert csr.offsets.max() <= 255


def test_exact_dummy_thresholds():
    # a skip of 255 fits one offset; 256 needs one dummy with the entry at offset 0
    for col, want_values, want_offsets in [
        (255, [4], [255]),
        (256, [0, 4], [255, 0]),
        (511, [0, 4], [255, 255]),
        (512, [0, 0, 4], [255, 255, 0]),
    ]:
        w = np.zeros((1, 600), np.int8)
        w[0, col] = 4
        csr = encode(w)
        assert csr.values.tolist() == want_values, col
        assert csr.offsets.tolist() == want_offsets, col


def test_empty_and_full_rows():
    rng = np.random.default_rng(1)
    w = np.zeros((4, 300), np.int8)
    w[1] = rng.integers(1, 128, 300).astype(np.int8)  # full row: 300 entries, all offset 0
    w[3, 299] = -1                                      # only the last column
    csr = encode(w)
    assert csr.row_counts.tolist() == [0, 300, 0, 2]
    assert (csr.offsets[:300] == 0).all()
    np.testing.assert_array_equal(csr.decode(), w)


def test_all_zero_matrix_has_no_entries():
    csr = encode(np.zeros((5, 70000), np.int8))
    assert csr.num_entries == 0
    assert csr.row_counts.tolist() == [0] * 5
    assert csr.nbytes() == 2 * 5 + 4 * 5
    np.testing.assert_array_equal(csr.decode(), np.zeros((5, 70000), np.int8))


def test_wide_rows_beyond_65535_columns():
    rng = np.random.default_rng(2)
    n = 70_001
    w = _random_matrix(rng, 3, n, 0.002)
    w[0, n - 1] = 3
    w[2, 65_536] = -7
    csr = encode(w)
    np.testing.assert_array_equal(csr.decode(), w)
    values, offsets, counts = _naive_encode(w)
    assert csr.row_counts.tolist() == counts
    assert csr.offsets.tolist() == offsets


def test_large_layer_round_trip():
    # the size of the seed's biggest layers, at two densities
    rng = np.random.default_rng(3)
    for density in (0.001, 0.3):
        w = _random_matrix(rng, 128, 16384, density)
        csr = encode(w)
        np.testing.assert_array_equal(csr.decode(), w)
        assert csr.num_entries >= np.count_nonzero(w)


def test_nbytes_counts_values_offsets_row_counts_and_bias():
    w = np.zeros((3, 1000), np.int8)
    w[0, 0], w[0, 256], w[0, 999], w[2, 600] = 5, -3, 1, 7
    csr = encode(w)
    e, m = 8, 3
    assert csr.nbytes() == 2 * e + 2 * m + 4 * m == 34
    assert csr.nbytes(has_bias=False) == 2 * e + 2 * m == 22
    assert csr.nbytes(bias_itemsize=8) == 2 * e + 2 * m + 8 * m == 46


def test_row_limit_names_layer_and_row():
    w = np.zeros((3, MAX_ROW_ENTRIES + 1), np.int8)
    w[0, :100] = 1
    w[2, :] = 1  # 32768 entries
    with pytest.raises(ValueError, match=r"layer 'mam_dense_7'.*row 2 needs 32768 entries"):
        encode(w, name="mam_dense_7")


def test_row_limit_counts_dummy_entries():
    # 32767 entries exactly is fine; dummies count toward the limit
    n = MAX_ROW_ENTRIES + 600
    w = np.zeros((1, n), np.int8)
    w[0, :MAX_ROW_ENTRIES] = 1
    assert int(encode(w).row_counts[0]) == MAX_ROW_ENTRIES
    w[0, n - 1] = 1  # one more entry, after a 599-column gap (2 dummies): 32770
    with pytest.raises(ValueError, match=r"row 0 needs 32770 entries"):
        encode(w, name="d")


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros(5, np.int8))
    with pytest.raises(ValueError, match="int8"):
        encode(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="outside int8"):
        encode(np.array([[200, 0]]))
    with pytest.raises(ValueError, match="M >= 1 and N >= 1"):
        encode(np.zeros((0, 4), np.int8))
    # integers inside int8's range are accepted
    np.testing.assert_array_equal(encode(np.array([[0, -128, 127]])).decode(), [[0, -128, 127]])


@pytest.mark.parametrize("corrupt, message", [
    (lambda c: OffsetCSR(c.values, c.offsets[:-1], c.row_counts, c.shape),
     "values has 4 entries but offsets has 3"),
    (lambda c: OffsetCSR(c.values, c.offsets, [2, 1, 0], c.shape),
     "row_counts sum to 3 but values has 4 entries"),
    (lambda c: OffsetCSR(c.values, c.offsets, [3, -1, 2], c.shape),
     "row 1 has a negative row count -1"),
    (lambda c: OffsetCSR(c.values, c.offsets, c.row_counts, (3, 299)),
     "row 2 entry 1 decodes column 299 >= in_features 299"),
    (lambda c: OffsetCSR(c.values, c.offsets, [4, 0, 0], (3, 400)),
     "row 0 entry 2 decodes column 456 >= in_features 400"),
    (lambda c: OffsetCSR(c.values, c.offsets, c.row_counts[:2], c.shape),
     "row_counts has 2 entries, shape says M = 3"),
])
def test_check_rejects_corrupted_layouts(corrupt, message):
    w = np.zeros((3, 300), np.int8)
    w[0, 3], w[0, 200], w[2, 299] = 1, 2, 3
    csr = encode(w)
    # worked by hand: row 0 = (1, 3), (2, 196); row 2 = dummy (0, 255), (3, 43)
    assert csr.values.tolist() == [1, 2, 0, 3]
    assert csr.offsets.tolist() == [3, 196, 255, 43]
    assert csr.row_counts.tolist() == [2, 0, 2]
    bad = corrupt(csr)
    with pytest.raises(ValueError, match=r"layer 'L': " + message):
        bad.check(name="L")
    with pytest.raises(ValueError):
        bad.decode()


def test_constructor_refuses_values_outside_dtypes():
    with pytest.raises(ValueError, match="offsets holds 0..256"):
        OffsetCSR([1, 2], [0, 256], [2], (1, 600))
    with pytest.raises(ValueError, match="row_counts holds"):
        OffsetCSR([], [], [40000], (1, 5))
    csr = OffsetCSR([1, 2], [0, 3], [2], (1, 10))
    assert csr.values.dtype == np.int8 and csr.columns().tolist() == [0, 4]

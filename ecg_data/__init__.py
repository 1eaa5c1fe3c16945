"""ecg_data: ECG windows in, numpy arrays out (synthetic ECGSYN, WFDB records, compressed sensing)."""
__all__: list[str] = []

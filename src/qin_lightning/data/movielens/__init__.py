"""MovieLens releases as MMCTR datasets: release.py reads, convert.py converts, source.py prepares on first use."""

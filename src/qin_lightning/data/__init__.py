"""Data: the MMCTR parquet layout, its validator, generators, converters and the LightningDataModule."""

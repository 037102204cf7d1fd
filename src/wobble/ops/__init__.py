"""Operations: running the stages in order (`pipeline`), watching the champion once lists are out
(`monitor`), and splitting the weekly work across a Dask cluster (`scale`)."""

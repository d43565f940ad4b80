"""`toolkit predict --engine ray`: the run of toolkit.predict.run on a Ray cluster (Ray Data).

Modules: engine (the dataset, the block tasks that decode and predict, batches back in input order),
cluster (starting or joining Ray, sizing), uris (inputs beyond local folders: s3://... and other pyarrow
filesystems), parquet (-o NAME.parquet: rows written on the cluster). Ray is imported only by the functions
that use it.
"""

"""What a run leaves for people to read: the HTML report of `dbprompt eval --report`, and training logs.

`page` writes the report, `plots` draws its figures (matplotlib, imported only here), and
`training_log` writes `dbprompt train --log-dir`'s CSV and TensorBoard scalars.
"""

"""Probe trainer: pack token shards, train small phi-1-shaped models, evaluate, write scorecards.

Entry points (import from the submodules; this package imports nothing heavy on its own):
    trainer.data.pack_parquet_files / pack_documents   -> token directory
    trainer.train.train_probe(token_dir, out_dir, TrainConfig)
    trainer.evaluate.evaluate_probe(probe_dir, token_dir, EvalConfig)
    trainer.scorecard.write_scorecard(...) / compare_scorecards(paths)
"""

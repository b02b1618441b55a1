"""llmforge.train: training functions over a model, a data source and a config dataclass.

    pretrain(model, data, PretrainConfig(...))   causal-LM pretraining with exact resume
"""

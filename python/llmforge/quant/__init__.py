"""llmforge.quant: quantisers (RTN, GPTQ, AWQ, SmoothQuant W8A8) and quality metrics (the quant ladder).

    from llmforge.quant.gptq import quantize_model_gptq
    from llmforge.quant.awq import quantize_model_awq
    from llmforge.quant.smoothquant import smoothquant
    from llmforge.quant.quality import compare_models, sqnr_db
    from llmforge.quant.ladder import quant_ladder      # every method, one report (md + png + json)
"""

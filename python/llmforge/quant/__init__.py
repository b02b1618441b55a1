"""llmforge.quant: quantisers (RTN, GPTQ, AWQ) and quality metrics (the quant ladder).

    from llmforge.quant.gptq import quantize_model_gptq
    from llmforge.quant.awq import quantize_model_awq
    from llmforge.quant.quality import compare_models, sqnr_db
"""

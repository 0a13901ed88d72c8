"""Which compute ops run on integers, per runtime: the one table the export gate, the benchmark's
precision verdict and predict all read (they used to keep three, and disagreed on the same file)."""

# Compute ops in ONNX Runtime's optimized graph that run integer kernels ...
ORT_INT8_OPS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM", "QLinearConvTranspose",
    "QOrderedMatMul", "QOrderedAttention", "QEmbedLayerNormalization",
})
# ... and those that run floating-point kernels.
ORT_FLOAT_OPS = frozenset({
    "Conv", "ConvTranspose", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
    "TransposeMatMul", "Attention", "MultiHeadAttention", "GroupQueryAttention", "LSTM", "GRU", "RNN", "Einsum",
    "MatMulNBits",
})
# OpenVINO runtime-graph layer types that do the arithmetic (the rest moves or reshapes data).
OV_COMPUTE_LAYERS = frozenset({
    "Convolution", "GroupConvolution", "Deconvolution", "GroupDeconvolution", "FullyConnected", "MatMul",
    "ScaledAttn", "RNNSeq", "RNNCell",
})
# OpenVINO's runtimePrecision words in edgekd's terms; u8/i8 are integer kernels.
OV_PRECISIONS = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}
ONNX_FLOAT_TYPES = {10: "fp16", 16: "bf16"}  # TensorProto.FLOAT16, BFLOAT16; anything else reads fp32

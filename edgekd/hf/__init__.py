"""Hugging Face text encoders: teachers from local model directories, `layers:N[,ffn:F][,heads:H]` and
`prune:R` students, tokenization for training, KD recipes and the Optimum layout. (The embedding-agreement
metric these students are judged by is the 'embedding' task's own, in edgekd.distill.embedding; it is
re-exported here.)

    from edgekd.hf import load_sentence_encoder, load_tokenizer, make_student, encoder_kd_config
    teacher = load_sentence_encoder(path=model_dir)
    student = make_student(teacher=teacher, spec="layers:3").model
    config = encoder_kd_config(student=student, teacher=teacher, tokenizer=load_tokenizer(path=model_dir))
"""

from edgekd.distill.embedding import embedding_agreement, embedding_task_metric
from edgekd.hf.deploy import (OUTPUT_NAMES, FeatureExtraction, export_encoder, export_inputs,
                              write_optimum_layout)
from edgekd.hf.encoder import (Pooling, SentenceEncoder, is_hf_model_dir, load_model_dir, load_sentence_encoder,
                               model_ref, pooling_config, read_layout, sentence_encoder)
from edgekd.hf.kd import block_pairs, disable_dropout, encoder_kd_config, encoder_kd_terms, mix_text
from edgekd.hf.students import (depth_width_student, layer_map, layer_names, layer_student, make_student,
                                student_ladder)
from edgekd.hf.text import (DEFAULT_MAX_LENGTH, DYNAMIC_DIMS, INPUT_NAMES, TextCollate, encode_batch,
                            load_tokenizer, tokenize_texts)

__all__ = [
    "DEFAULT_MAX_LENGTH", "DYNAMIC_DIMS", "INPUT_NAMES", "OUTPUT_NAMES", "FeatureExtraction", "Pooling",
    "SentenceEncoder", "TextCollate", "block_pairs", "depth_width_student", "disable_dropout", "embedding_agreement",
    "embedding_task_metric", "encode_batch", "encoder_kd_config", "encoder_kd_terms", "export_encoder",
    "export_inputs", "is_hf_model_dir", "layer_map", "layer_names", "layer_student", "load_model_dir",
    "load_sentence_encoder", "load_tokenizer", "make_student", "mix_text", "model_ref", "pooling_config",
    "read_layout", "sentence_encoder", "student_ladder", "tokenize_texts", "write_optimum_layout",
]

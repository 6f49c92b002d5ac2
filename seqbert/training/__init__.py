"""seqbert.training"""

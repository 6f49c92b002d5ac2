"""seqbert.evaluation"""

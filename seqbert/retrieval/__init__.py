"""seqbert.retrieval"""

"""seqbert.data"""

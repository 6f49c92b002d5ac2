"""seqbert.tasks"""

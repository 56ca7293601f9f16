"""The sampling X-ray (issue 27): what the samplers did to each token of a reply.

chain.py is the pinned llama.cpp sampling chain as arithmetic on one token's candidates
(what each stage keeps, which stage cut each candidate, the final probabilities).
"""

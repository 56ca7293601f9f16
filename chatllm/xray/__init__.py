"""The sampling X-ray (issue 27): what the samplers did to each token of a reply.

chain.py is the pinned llama.cpp sampling chain as arithmetic on one token's candidates
(what each stage keeps, which stage cut each candidate, the final probabilities);
public/elements/XRay.jsx runs a port of it in the page. records.py is a reply's token
records as the store keeps them and as the X-ray reads them (through XRAY_URL).
"""

#: Where a reply's token records are read: XRAY_URL/{thread}/{step} (chatllm.web).
XRAY_URL = "/chatllm/xray"

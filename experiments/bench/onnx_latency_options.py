"""Batch-1 ONNX Runtime latency of the default QIN (random weights, MicroLens vocab) under session options.

Run: .venv/bin/python experiments/bench/onnx_latency_options.py   (results: onnx_latency_options.txt)
"""
import time, numpy as np, torch, onnxruntime as ort, tempfile
from pathlib import Path
from qin_lightning.models.qin import QIN
from qin_lightning.serving.onnx_export import export_onnx, INPUT_NAMES
torch.manual_seed(0)
N=91718
tags=torch.randint(1,11740,(N,5)); tags[0]=0
mm=torch.randn(N,128); mm[0]=0
net=QIN(tags, mm, 11740).eval()
path=export_onnx(net, Path(tempfile.mkdtemp())/"m.onnx", seq_len=64)
rng=np.random.default_rng(0)
def req():
    L=rng.integers(0,20); seq=np.zeros((1,64),dtype=np.int64); seq[0,64-L:]=rng.integers(1,N,L)
    return {"item_seq":seq,"item_id":rng.integers(1,N,(1,)),"likes_level":rng.integers(0,11,(1,)),"views_level":rng.integers(0,11,(1,))}
feeds=[req() for _ in range(3000)]

def run(opts, label):
    s=ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for f in feeds[:100]: s.run(None,f)
    t=[]
    for f in feeds:
        t0=time.perf_counter(); s.run(None,f); t.append((time.perf_counter()-t0)*1e3)
    print(label, "p50 %.3f p99 %.3f p999 %.3f"%tuple(np.percentile(t,[50,99,99.9])))
for intra in (1,2):
    for spin in ("1","0"):
        o=ort.SessionOptions(); o.intra_op_num_threads=intra; o.inter_op_num_threads=1
        o.add_session_config_entry("session.intra_op.allow_spinning", spin)
        o.execution_mode=ort.ExecutionMode.ORT_SEQUENTIAL
        run(o, f"intra={intra} spin={spin}")

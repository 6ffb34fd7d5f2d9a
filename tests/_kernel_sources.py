"""Hand-written Triton kernel modules the build tests share (inspect, export, cache).

They are written the way fusionlab generates kernels (a ``@triton.jit`` kernel and its
``launch_*`` function in one importable module), small enough to read in a test failure.
"""

ADD_RELU = """\
import torch
import triton
import triton.language as tl


@triton.jit
def fused_add_relu_0(in_a, in_b, out_y, xnumel, XBLOCK: tl.constexpr):
    xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = xindex < xnumel
    a = tl.load(in_a + xindex, mask=xmask, other=0.0)
    b = tl.load(in_b + xindex, mask=xmask, other=0.0)
    y = tl.maximum(a + b, 0.0)                       # aten.add.Tensor + aten.relu.default
    tl.store(out_y + xindex, y, mask=xmask)


def launch_fused_add_relu_0(a, b, XBLOCK=1024, num_warps=4):
    y = torch.empty_like(a)
    n = a.numel()
    fused_add_relu_0[(triton.cdiv(n, XBLOCK),)](a, b, y, n, XBLOCK=XBLOCK, num_warps=num_warps)
    return y
"""

BIAS_GELU = """\
import torch
import triton
import triton.language as tl


@triton.jit
def fused_bias_gelu_0(in_x, in_bias, out_y, xnumel, XBLOCK: tl.constexpr):
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)
    xmask = xindex < xnumel
    c = xindex % 768
    x = tl.load(in_x + xindex, mask=xmask, other=0.0).to(tl.float32)
    bias = tl.load(in_bias + c, mask=xmask, other=0.0).to(tl.float32)
    add = x + bias                                   # aten.add.Tensor      h.0.mlp.fc
    mul = add * 0.7071067811865476                   # aten.mul.Tensor      h.0.mlp.act
    erf = tl.erf(mul)                                # aten.erf.default     h.0.mlp.act
    add_1 = erf + 1.0                                # aten.add.Tensor      h.0.mlp.act
    mul_1 = add * 0.5                                # aten.mul.Tensor      h.0.mlp.act
    y = mul_1 * add_1                                # aten.mul.Tensor      h.0.mlp.act
    tl.store(out_y + xindex, y, mask=xmask)


def launch_fused_bias_gelu_0(x, bias, XBLOCK=1024, num_warps=4):
    y = torch.empty_like(x)
    n = x.numel()
    fused_bias_gelu_0[(triton.cdiv(n, XBLOCK),)](x, bias, y, n, XBLOCK=XBLOCK, num_warps=num_warps)
    return y
"""

RMSNORM = """\
import torch
import triton
import triton.language as tl


@triton.jit
def fused_rmsnorm_0(in_x, in_w, out_y, xnumel, rnumel, XBLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)[:, None]
    xmask = xindex < xnumel
    rindex = tl.arange(0, RBLOCK)[None, :]
    rmask = rindex < rnumel
    x = tl.load(in_x + xindex * rnumel + rindex, mask=xmask & rmask, other=0.0).to(tl.float32)
    w = tl.load(in_w + rindex, mask=rmask, other=0.0).to(tl.float32)
    ssum = tl.sum(x * x, 1)[:, None]                 # aten.pow + aten.sum
    inv = tl.rsqrt(ssum / rnumel + 1e-6)             # aten.mean + aten.add + aten.rsqrt
    y = x * inv * w                                  # aten.mul x2
    tl.store(out_y + xindex * rnumel + rindex, y, mask=xmask & rmask)


def launch_fused_rmsnorm_0(x, w, XBLOCK=1, RBLOCK=None, num_warps=4):
    n, r = x.shape
    RBLOCK = RBLOCK or triton.next_power_of_2(r)
    y = torch.empty_like(x)
    fused_rmsnorm_0[(triton.cdiv(n, XBLOCK),)](x, w, y, n, r, XBLOCK=XBLOCK, RBLOCK=RBLOCK, num_warps=num_warps)
    return y
"""

SOFTMAX_LOOPED = """\
import torch
import triton
import triton.language as tl


@triton.jit
def fused_softmax_1(in_x, out_y, xnumel, rnumel, XBLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)[:, None]
    xmask = xindex < xnumel
    rbase = tl.arange(0, RBLOCK)[None, :]
    _max = tl.full([XBLOCK, RBLOCK], float("-inf"), tl.float32)
    for roffset in range(0, rnumel, RBLOCK):
        rindex = roffset + rbase
        rmask = rindex < rnumel
        x = tl.load(in_x + xindex * rnumel + rindex, mask=xmask & rmask, other=float("-inf")).to(tl.float32)
        _max = tl.maximum(_max, x)
    amax = tl.max(_max, 1)[:, None]                  # aten.amax
    _sum = tl.zeros([XBLOCK, RBLOCK], tl.float32)
    for roffset in range(0, rnumel, RBLOCK):
        rindex = roffset + rbase
        rmask = rindex < rnumel
        x = tl.load(in_x + xindex * rnumel + rindex, mask=xmask & rmask, other=float("-inf")).to(tl.float32)
        _sum = _sum + tl.where(xmask & rmask, tl.exp(x - amax), 0.0)
    denom = tl.sum(_sum, 1)[:, None]                 # aten.sum
    for roffset in range(0, rnumel, RBLOCK):
        rindex = roffset + rbase
        rmask = rindex < rnumel
        x = tl.load(in_x + xindex * rnumel + rindex, mask=xmask & rmask, other=0.0).to(tl.float32)
        y = tl.exp(x - amax) / denom                 # aten.sub + aten.exp + aten.div
        tl.store(out_y + xindex * rnumel + rindex, y, mask=xmask & rmask)


def launch_fused_softmax_1(x, XBLOCK=1, RBLOCK=128, num_warps=4):
    n, r = x.shape
    y = torch.empty_like(x)
    fused_softmax_1[(triton.cdiv(n, XBLOCK),)](x, y, n, r, XBLOCK=XBLOCK, RBLOCK=RBLOCK, num_warps=num_warps)
    return y
"""

"""Independent reference computations in plain NumPy (float64), written from the papers'
formulas, loop by loop where that is clearer. The kd_ref losses are checked against these."""
import numpy as np


def softmax(z, T=1.0):
    z = np.asarray(z, dtype=np.float64) / T
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p, q):
    """sum_i p_i log(p_i / q_i) over the last axis, 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / np.where(p > 0, q, 1)), 0.0)
    return terms.sum(axis=-1)


def entropy(p):
    p = np.asarray(p, np.float64)
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0).sum(axis=-1)


def kd(s, t, T, mask=None):
    per_position = T * T * kl(softmax(t, T), softmax(s, T))
    return per_position.mean() if mask is None else per_position[mask].mean()


def soft_ce(s, t, T):
    return (T * T * -(softmax(t, T) * np.log(softmax(s, T))).sum(-1)).mean()


def cross_entropy(s, y):
    p = softmax(s)
    return -np.log(p[np.arange(len(y)), y]).mean()


def dkd_authors(s, t, y, alpha, beta, T):
    """The DKD computation as the authors' code does it (probabilities, then log,
    the -1000 trick for the non-target part), transcribed to NumPy."""
    n, c = s.shape
    gt = np.zeros((n, c), bool)
    gt[np.arange(n), y] = True
    ps, pt = softmax(s, T), softmax(t, T)
    bs = np.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = np.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * T**2 / n
    qs, qt = softmax(s / T - 1000.0 * gt), softmax(t / T - 1000.0 * gt)
    nckd = kl(qt, qs).sum() * T**2 / n
    return alpha * tckd + beta * nckd


def attention_map(f, p=2):
    a = (np.abs(f) ** p).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def avg_pool(f, k):
    b, c, h, w = f.shape
    return f.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))


def at(fs, ft, p=2):
    return ((attention_map(fs, p) - attention_map(ft, p)) ** 2).mean()


def huber(x, y):
    d = np.abs(x - y)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def rkd_distance(s, t):
    def normalised(e):
        b = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
        return d / d[~np.eye(b, dtype=bool)].mean()
    return huber(normalised(s), normalised(t))


def rkd_angle(s, t):
    def cosines(e):
        b = len(e)
        out = np.zeros((b, b, b))
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[j, i, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out
    return huber(cosines(s), cosines(t))


def sp(fs, ft):
    b = fs.shape[0]
    def gram(f):
        f = f.reshape(b, -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    return ((gram(ft) - gram(fs)) ** 2).sum() / b**2


# -- divergences for language models (probability space, position by position) --------

def _positions(s, t, T, mask):
    """Softmax rows of student and teacher as (N, V), keeping the unmasked positions."""
    ps, pt = softmax(s, T).reshape(-1, np.shape(s)[-1]), softmax(t, T).reshape(-1, np.shape(t)[-1])
    if mask is not None:
        keep = np.asarray(mask, bool).reshape(-1)
        ps, pt = ps[keep], pt[keep]
    return ps, pt


def reverse_kl(s, t, T=1.0, mask=None):
    ps, pt = _positions(s, t, T, mask)
    return T * T * kl(ps, pt).mean()


def generalized_jsd(s, t, beta, T=1.0, mask=None):
    """GKD's JSD_beta (TRL's convention): m = beta p_t + (1 - beta) p_s, end points exact."""
    ps, pt = _positions(s, t, T, mask)
    if beta == 0:
        rows = kl(pt, ps)
    elif beta == 1:
        rows = kl(ps, pt)
    else:
        rows = []
        for p, q in zip(ps, pt):                       # one position at a time, written out
            m = beta * q + (1 - beta) * p
            rows.append(beta * kl(q, m) + (1 - beta) * kl(p, m))
        rows = np.array(rows)
    return T * T * rows.mean()


def skew_kl(s, t, alpha, T=1.0, mask=None):
    ps, pt = _positions(s, t, T, mask)
    return T * T * kl(pt, alpha * pt + (1 - alpha) * ps).mean()


def skew_reverse_kl(s, t, alpha, T=1.0, mask=None):
    ps, pt = _positions(s, t, T, mask)
    return T * T * kl(ps, alpha * ps + (1 - alpha) * pt).mean()


# -- attention from scores, MiniLM's value relation ------------------------------------

def log_softmax(z):
    """Stable log softmax over the last axis; rows may hold -inf (masked keys)."""
    z = np.asarray(z, np.float64)
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def attention_kl_from_scores(s_scores, t_scores, mask=None):
    """MiniLM's attention KL from (B, H, L, L) scores, row by row, in log space.

    With a (B, L) token mask, each sequence is cut to its real tokens first (padded keys
    removed, padded queries dropped), then every remaining row counts once.
    """
    B, H, L, _ = s_scores.shape
    rows = []
    for b in range(B):
        real = np.arange(L) if mask is None else np.flatnonzero(np.asarray(mask)[b])
        for h in range(H):
            for q in real:
                ls = log_softmax(s_scores[b, h, q, real])
                lt = log_softmax(t_scores[b, h, q, real])
                pt = np.exp(lt)
                terms = np.where(pt > 0, pt * (np.where(pt > 0, lt, 0) - np.where(pt > 0, ls, 0)), 0.0)
                rows.append(terms.sum())
    return float(np.mean(rows)) if rows else 0.0


def value_relation(vs, vt, mask=None):
    """MiniLM's value relation: KL(softmax(V_t V_t^T / sqrt(d_t)) || softmax(V_s V_s^T / sqrt(d_s)))."""
    vs, vt = np.asarray(vs, np.float64), np.asarray(vt, np.float64)
    rs = np.einsum("bhid,bhjd->bhij", vs, vs) / np.sqrt(vs.shape[-1])
    rt = np.einsum("bhid,bhjd->bhij", vt, vt) / np.sqrt(vt.shape[-1])
    return attention_kl_from_scores(rs, rt, mask)

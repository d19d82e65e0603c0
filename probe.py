"""
probe.py: evaluate frozen JEPA features — linear probe, kNN, nearest-neighbour precision@k — always next to
the same numbers for a randomly initialised encoder of the same shape.

    python probe.py --ckpt=runs/shapes_ijepa                      # every checkpoint of a run: accuracy over training
    python probe.py --ckpt=runs/shapes_ijepa/ckpt_0001170.pt      # one checkpoint
    python probe.py --ckpt=RUN --data=tinyimagenet --data_dir=...  # transfer: probe on another dataset
    python probe.py --ckpt=CKPT --export=emb.npz                  # embeddings, labels, class names for analyze.py

Protocol: features are the average-pooled last-layer tokens of the frozen encoder (the EMA target encoder for
I-JEPA and SparseJEPA). Linear probe: features standardised on the train split, multinomial logistic regression
trained to convergence (L-BFGS), weight decay chosen on a held-out 10 % of train, then refit on all of train;
top-1 on the test split. kNN: cosine similarity, k = 20, votes weighted by exp(sim / 0.07).
"""
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import jepa

# ----------------------------------------------------------------------------- config
DEFAULTS = {
    'ckpt': '',           # checkpoint file, or a run directory (then every checkpoint in it, oldest first)
    'data': '',           # dataset to probe on ('' = the one the checkpoint trained on); see jepa.py -h
    'data_dir': '',       # its folder or archive ('' = the checkpoint's)
    'export': '',         # write test-split embeddings, labels and class names of the last checkpoint to this .npz
    'batch_size': 512,    # images per forward pass when extracting features
    'device': 'auto',     # auto | cuda | mps | cpu
    'knn': True,          # also kNN accuracy and precision@5 (cheap)
}
HELP = """usage: python probe.py --ckpt=PATH [--key=value ...]

  --ckpt=PATH          checkpoint file, or a run directory (then every checkpoint, giving accuracy over training)
  --data=NAME          dataset to probe on ('' = the checkpoint's own); shapes|cifar10|cifar100|tinyimagenet|folder
  --data_dir=PATH      its folder or archive ('' = the checkpoint's own)
  --export=FILE.npz    save test-split embeddings, labels and class names of the last checkpoint
  --batch_size=512     images per forward pass when extracting features
  --device=auto        auto | cuda | mps | cpu
  --knn=True           also report kNN accuracy (k=20, tau=0.07) and precision@5"""

# ----------------------------------------------------------------------------- features


# The features, the linear probe and the summary that ends every jepa.py run.
@torch.no_grad()
def extract_features(model, images, batch_size=512):
    """Average-pooled output tokens of a frozen encoder. images uint8 (N, 3, S, S) -> features float32 (N, D)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    autocast = torch.autocast(dev.type, dtype) if (dtype := jepa.device_policy(str(dev), False).dtype) else \
        contextlib.nullcontext()
    out = []
    for x in images.split(batch_size):
        with autocast:
            out.append(model(jepa.normalize(x.to(dev))).mean(1).float())  # (b, D)
    model.train(was_training)
    return torch.cat(out)


def _fit_logreg(x, y, num_classes, wd, max_iter=500):
    """Multinomial logistic regression, L-BFGS to convergence on the whole set. x (N, D) -> (W (D, C), b (C,))."""
    W = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W + b, y) + 0.5 * wd * W.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return W.detach(), b.detach()


def linear_probe(train_x, train_y, test_x, test_y, wds=(1e-5, 1e-4, 1e-3, 1e-2), holdout=0.1, seed=0):
    """Top-1 accuracy of a linear classifier on frozen features. Features standardised with train statistics;
    the weight decay with the best accuracy on a held-out part of train is refit on all of train."""
    train_x, test_x = train_x.float(), test_x.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    C = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train_x), generator=g).to(train_x.device)
    n_hold = max(1, int(len(train_x) * holdout))
    hold, fit = perm[:n_hold], perm[n_hold:]
    best = max(wds, key=lambda wd: _accuracy(*_fit_logreg(train_x[fit], train_y[fit], C, wd), train_x[hold], train_y[hold]))
    return _accuracy(*_fit_logreg(train_x, train_y, C, best), test_x, test_y)


def _accuracy(W, b, x, y):
    return ((x @ W + b).argmax(1) == y).float().mean().item()


def summarize(model, data, cfg, stats):
    """jepa.py's end of a run: linear probe of the trained representation and of a random-init encoder of the same
    shape, with the run's numbers; printed and written to summary.json."""
    out = {'method': cfg['method'], 'data': cfg['data']}
    if cfg['probe']:
        random_init = jepa.build_model(dict(cfg, seed=cfg['seed'] + 1), data['train_x'].device).encoder  # same shape
        for name, enc in (('', model.features_encoder()), ('_random_init', random_init)):
            tr, te = extract_features(enc, data['train_x']), extract_features(enc, data['test_x'])
            out[f'probe_acc{name}'] = linear_probe(tr, data['train_y'].to(tr.device), te, data['test_y'].to(te.device))
    out.update({k: stats[k] for k in ('train_seconds', 'img_per_s', 'params_M', 'steps', 'final_loss')})
    print('-' * 20 + ' summary')
    for k, v in out.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    with open(os.path.join(stats['run_dir'], 'summary.json'), 'w') as f:
        json.dump(out, f, indent=1)
    return out


# ----------------------------------------------------------------------------- checkpoints


def evaluation_data(saved, args, dev):
    """The run's config with the dataset probe.py or analyze.py evaluates on (its own, or --data and --data_dir;
    --data_dir alone: the same dataset read from elsewhere) -> (config, dataset dict on dev)."""
    cfg = dict(saved)
    if args['data']:
        cfg['data'], cfg['data_dir'] = args['data'], args['data_dir']
    elif args['data_dir']:
        cfg['data_dir'] = args['data_dir']
    if cfg['data'] not in jepa.DATASETS:
        raise jepa.UserError(f"--data={cfg['data']}: choose one of {', '.join(jepa.DATASETS)}")
    return cfg, jepa.load_data(cfg, dev)


def model_from_checkpoint(ck, dev='cpu'):
    """Rebuild the JEPA a checkpoint was saved from and load its weights."""
    cfg = {k: getattr(jepa, k) for k in jepa.CONFIG_KEYS} | ck['config']  # keys newer than the checkpoint: defaults
    model = jepa.build_model(cfg, dev)
    try:
        model.load_state_dict(ck['model'])
    except RuntimeError as e:
        raise jepa.UserError(f"checkpoint weights do not fit its own config ({str(e).splitlines()[0]})")
    return model, cfg

# ----------------------------------------------------------------------------- neighbours


def knn_accuracy(train_x, train_y, test_x, test_y, k=20, tau=0.07, chunk=1024):
    """Weighted kNN (Wu et al. 2018): cosine similarity, each of the k nearest train samples votes for its
    class with weight exp(sim / tau); accuracy of the top-voted class on the test set."""
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    C = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    correct = 0
    for xs, ys in zip(test_x.split(chunk), test_y.split(chunk)):
        sim, idx = (xs @ train_x.T).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(xs), C, device=xs.device).scatter_add_(1, train_y[idx], (sim / tau).exp())
        correct += (votes.argmax(1) == ys).sum().item()
    return correct / len(test_x)


def nn_precision_at_k(x, y, k=5, chunk=1024):
    """Mean share of each sample's k cosine nearest neighbours (itself excluded) that have its class."""
    x = F.normalize(x.float(), dim=1)
    k = min(k, len(x) - 1)
    hits = 0.0
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T  # (b, N)
        sim[torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])] = float('-inf')
        idx = sim.topk(k, dim=1).indices  # (b, k)
        hits += (y[idx] == y[start:start + chunk, None]).float().sum().item()
    return hits / (len(x) * k)

# ----------------------------------------------------------------------------- protocol


def evaluate(encoder, data, linear_only=False, batch_size=512):
    """All protocol numbers for one encoder on a dataset dict from jepa.load_data."""
    tr = extract_features(encoder, data['train_x'], batch_size)
    te = extract_features(encoder, data['test_x'], batch_size)
    ytr, yte = data['train_y'].to(tr.device), data['test_y'].to(te.device)
    out = {'linear': linear_probe(tr, ytr, te, yte)}
    if not linear_only:
        out['knn'] = knn_accuracy(tr, ytr, te, yte)
        out['p_at_5'] = nn_precision_at_k(te, yte)
    return out


def probe_checkpoints(paths, args):
    """Evaluate each checkpoint (and one random-init encoder of the same shape) on one dataset."""
    dev = jepa.pick_device(args['device'])
    first = jepa.load_checkpoint(paths[0])
    cfg, data = evaluation_data(first['config'], args, dev)
    rows = []
    random_model = jepa.build_model(dict(cfg, seed=cfg['seed'] + 1), dev)
    for path in ['random-init'] + list(paths):
        t0 = time.time()
        if path == 'random-init':
            enc, epoch = random_model.encoder, 0
        else:
            ck = first if path == paths[0] else jepa.load_checkpoint(path)
            model, _ = model_from_checkpoint(ck, dev)
            if (ck['config']['patch_size'], ck['config']['width']) != (first['config']['patch_size'], first['config']['width']):
                raise jepa.UserError(f"{path} has another model shape than {paths[0]}: probe runs one at a time")
            enc, epoch = model.features_encoder(), ck['epoch']
        r = evaluate(enc, data, linear_only=not args['knn'], batch_size=args['batch_size'])
        rows.append({'checkpoint': os.path.basename(path), 'epoch': epoch, **r})
        print(f"{rows[-1]['checkpoint']:>18} | epoch {epoch:>7.2f} | " +
              ' | '.join(f"{k} {v:.4f}" for k, v in r.items()) + f" | {time.time() - t0:.0f}s", flush=True)
    if args['export']:
        z = extract_features(enc, data['test_x'], args['batch_size']).cpu().numpy()
        np.savez(args['export'], embeddings=z, labels=data['test_y'].cpu().numpy(), classes=np.array(data['classes']))
        print(f"wrote {args['export']}: embeddings {z.shape}, labels, class names")
    return rows, cfg


def main(argv):
    args = jepa.parse_args(argv, DEFAULTS, HELP)
    if not args['ckpt']:
        raise jepa.UserError("--ckpt=PATH is required: a checkpoint file or a run directory")
    if os.path.isdir(args['ckpt']):
        paths = jepa.list_checkpoints(args['ckpt'])
        if not paths:
            raise jepa.UserError(f"{args['ckpt']} holds no ckpt_*.pt: train with jepa.py --out_dir={args['ckpt']} first")
    elif os.path.exists(args['ckpt']):
        paths = [args['ckpt']]
    else:
        raise jepa.UserError(f"--ckpt={args['ckpt']} does not exist")
    rows, cfg = probe_checkpoints(paths, args)
    if os.path.isdir(args['ckpt']):
        out = os.path.join(args['ckpt'], f"probe_{cfg['data']}.json")
        with open(out, 'w') as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {out}")
    return rows


if __name__ == '__main__':
    sys.exit(jepa.cli(main, sys.argv[1:]))

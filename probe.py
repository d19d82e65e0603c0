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


# The feature extraction and the linear probe live in jepa.py, whose end-of-run summary uses them too.
extract_features, linear_probe = jepa.extract_features, jepa.linear_probe

# ----------------------------------------------------------------------------- checkpoints


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
    cfg = dict(first['config'])
    if args['data']:
        cfg['data'], cfg['data_dir'] = args['data'], args['data_dir']
    elif args['data_dir']:
        cfg['data_dir'] = args['data_dir']
    if cfg['data'] not in jepa.DATASETS:
        raise jepa.UserError(f"--data={cfg['data']}: choose one of {', '.join(jepa.DATASETS)}")
    data = jepa.load_data(cfg, dev)
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

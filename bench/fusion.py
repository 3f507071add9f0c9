"""Training step and inference of a reference CNN with and without fused activations, or
(``layers``) single conv layers fused against their composition.

    python bench/fusion.py [MODEL] [BATCH] [INPUT_SIZE]      (default: lenet5 64)
    python bench/fusion.py layers

``layers`` times ``F.conv2d(x, w, b, activation=a)`` against ``F.a(F.conv2d(x, w, b))``, forward
and forward + backward, at batch 64 in this process (one framework: no pools to fight), the best
of three interleaved medians.

Each setting runs in its own worker process (alternating, three rounds; the best round of each
is quoted), so that neither inherits the other's caches or thread pools. A step is forward,
cross-entropy, backward and SGD with momentum on random data; inference is eval mode without a
graph. ``nn.fuse_activations(False)`` runs every layer and activation module on its own;
``True`` (the default) fuses conv/linear + bias + activation and BN + ReLU. Run it on a quiet
machine.
"""
import multiprocessing
import sys

ROUNDS, STEPS = 3, 20


def _worker(conn, fuse, model, batch, input_size):
    import convkern as ck
    from convkern import nn
    from model_step import median_ms, training_step

    nn.fuse_activations(fuse)
    net, x, step = training_step("fusion", model, batch, input_size)

    def infer():
        with ck.no_grad():
            net(x)

    train = median_ms(step, STEPS)
    net.eval()
    conn.send((train, median_ms(infer, STEPS)))


def main(model="lenet5", batch=64, input_size=None):
    from model_step import check_args
    check_args("fusion", model, batch, input_size)
    ctx = multiprocessing.get_context("spawn")
    best = {}
    for _ in range(ROUNDS):
        for fuse in (False, True):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, fuse, model, batch, input_size))
            proc.start()
            train, infer = parent.recv()
            proc.join()
            old = best.get(fuse, (float("inf"), float("inf")))
            best[fuse] = (min(old[0], train), min(old[1], infer))
    (t0, i0), (t1, i1) = best[False], best[True]
    size = f" at {input_size}x{input_size}" if input_size else ""
    print(f"{model}{size}, batch {batch}: train step unfused {t0:.2f} ms, fused {t1:.2f} ms ({t0 / t1:.2f}x); "
          f"inference unfused {i0:.2f} ms, fused {i1:.2f} ms ({i0 / i1:.2f}x)")


LAYERS = [("lenet5.c1 + tanh", (64, 1, 32, 32), (6, 1, 5, 5), 0, "tanh"),
          ("tf_mnist.conv1 + relu", (64, 1, 28, 28), (32, 1, 5, 5), 2, "relu"),
          ("cifar10.conv2 + relu", (64, 64, 12, 12), (64, 64, 5, 5), 2, "relu")]


def layers():
    import convkern as ck
    import convkern.functional as F
    import numpy as np
    from model_step import median_ms
    rng = np.random.default_rng(0)

    for name, x_shape, w_shape, pad, act in LAYERS:
        x = ck.tensor(rng.standard_normal(x_shape).astype(np.float32), requires_grad=True)
        w = ck.tensor(rng.standard_normal(w_shape).astype(np.float32) * 0.1, requires_grad=True)
        b = ck.tensor(rng.standard_normal(w_shape[0]).astype(np.float32), requires_grad=True)
        runs = {"fused": lambda: F.conv2d(x, w, b, padding=pad, activation=act),
                "composed": lambda: getattr(F, act)(F.conv2d(x, w, b, padding=pad))}

        def with_backward(fn):
            def run():
                y = fn()
                y.backward(np.ones(y.shape, np.float32))
            return run
        best = {}
        for _ in range(ROUNDS):
            for kind, fn in runs.items():
                for key, f in ((kind, fn), (kind + "+bwd", with_backward(fn))):
                    best[key] = min(best.get(key, float("inf")), median_ms(f, 30))
        print(f"{name}: forward fused {best['fused']:.2f} ms, composed {best['composed']:.2f} ms "
              f"({best['composed'] / best['fused']:.2f}x); forward + backward fused {best['fused+bwd']:.2f} ms, "
              f"composed {best['composed+bwd']:.2f} ms ({best['composed+bwd'] / best['fused+bwd']:.2f}x)")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["layers"]:
        layers()
        sys.exit()
    main(args[0] if args else "lenet5", int(args[1]) if len(args) > 1 else 64,
         int(args[2]) if len(args) > 2 else None)

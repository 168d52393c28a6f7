"""Richardson–Lucy deconvolution of a 3-D image in overlapping chunks on an rdask cluster.

The workload of the Dask blog post "Image Analysis Redux" (2020-11-12), which ran
``skimage.restoration.richardson_lucy`` through ``dask.array.map_overlap`` on 3-D microscopy
stacks. Here in plain NumPy (FFT convolution, a Gaussian PSF): the image is cut into chunks,
each chunk is sent with a halo of ``--halo`` voxels on every side to a worker as one task
(``client.submit``), the worker deconvolves it and returns the chunk's interior, and the
interiors are put back together. The same deconvolution of the whole image in this process is
the reference; the script exits 1 if the two differ.

Why they agree: each iteration convolves twice with the PSF, so a voxel's value after ``n``
iterations depends on voxels up to ``2 * n * r`` away (``r`` the PSF's radius). With a halo
that wide the chunked result equals the whole one up to floating-point rounding (the check
is then ``np.allclose`` with rtol 1e-9). The default halo is narrower (4 * r): what a
chunk misses beyond it reaches its interior only through many Gaussian tails, so the chunked
result agrees to rtol ``--rtol`` (default 1e-3, relative to the image's maximum); the script
prints the largest difference it measured. ``--halo exact`` takes ``2 * n * r``.

    python examples/python/deconvolve.py                      # 64^3, 2x2x2 chunks, 10 iterations
    python examples/python/deconvolve.py --size 128 --chunks 4 --iterations 20
    python examples/python/deconvolve.py --cluster default    # on a running cluster (`up`)

With no ``--cluster`` it starts a ``LocalCluster`` of ``--workers`` workers for the run.
"""

import argparse
import itertools
import sys
import time

import numpy as np


def gaussian_psf(radius, sigma):
    """A normalised 3-D Gaussian of shape ``(2 * radius + 1,) * 3``."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    psf = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return psf / psf.sum()


def convolve(image, psf):
    """``scipy.signal.fftconvolve(image, psf, mode="same")`` in NumPy: zero outside ``image``."""
    shape = [s + k - 1 for s, k in zip(image.shape, psf.shape)]
    axes = range(image.ndim)
    out = np.fft.irfftn(np.fft.rfftn(image, shape, axes) * np.fft.rfftn(psf, shape, axes), shape, axes)
    start = [(k - 1) // 2 for k in psf.shape]
    return out[tuple(slice(a, a + s) for a, s in zip(start, image.shape))]


def richardson_lucy(image, psf, iterations):
    """Richardson–Lucy as in ``skimage.restoration.richardson_lucy`` (no clipping)."""
    estimate = np.full(image.shape, 0.5)
    mirror = psf[::-1, ::-1, ::-1]
    eps = 1e-12
    for _ in range(iterations):
        blurred = convolve(estimate, psf)
        estimate = estimate * convolve(image / (blurred + eps), mirror)
    return estimate


def deconvolve_chunk(block, psf, iterations, interior):
    """A worker's task: deconvolve ``block`` (a chunk with its halo), return its ``interior``."""
    return richardson_lucy(block, psf, iterations)[interior]


def test_image(size, psf, seed=0):
    """A synthetic blurred image: bright points and a few smooth blobs, seen through ``psf``."""
    rng = np.random.default_rng(seed)
    truth = np.full((size,) * 3, 0.05)
    points = rng.integers(0, size, (max(8, size**3 // 500), 3))
    truth[tuple(points.T)] += rng.uniform(1.0, 5.0, len(points))
    grid = np.indices(truth.shape).astype(np.float64)
    for _ in range(4):
        centre = rng.uniform(0, size, 3)[:, None, None, None]
        truth += np.exp(-((grid - centre) ** 2).sum(0) / (2 * (size / 8) ** 2))
    return convolve(truth, psf)


def chunks(size, per_axis, halo):
    """For each chunk: ``(slices of the chunk with its halo in the image, slices of the chunk
    in the image, slices of the chunk in the block)``."""
    edges = np.linspace(0, size, per_axis + 1).round().astype(int)
    for corner in itertools.product(range(per_axis), repeat=3):
        outer, inner, local = [], [], []
        for i in corner:
            a, b = int(edges[i]), int(edges[i + 1])
            lo, hi = max(0, a - halo), min(size, b + halo)
            outer.append(slice(lo, hi))
            inner.append(slice(a, b))
            local.append(slice(a - lo, b - lo))
        yield tuple(outer), tuple(inner), tuple(local)


def run(client, image, psf, iterations, per_axis, halo):
    """The chunked deconvolution on ``client``'s cluster."""
    pieces = list(chunks(image.shape[0], per_axis, halo))
    futures = [
        client.submit(deconvolve_chunk, image[outer], psf, iterations, local) for outer, _, local in pieces
    ]
    out = np.empty_like(image)
    for (_, inner, _), f in zip(pieces, futures):
        out[inner] = f.result()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="edge of the cubic image in voxels (default 64)")
    p.add_argument("--chunks", type=int, default=2, help="chunks per axis (default 2: 8 chunks)")
    p.add_argument("--iterations", type=int, default=10, help="Richardson–Lucy iterations (default 10)")
    p.add_argument("--psf-radius", type=int, default=3, help="PSF radius in voxels (default 3: 7^3)")
    p.add_argument("--sigma", type=float, default=1.0, help="the Gaussian PSF's sigma (default 1.0)")
    p.add_argument("--halo", default=None, help="halo width in voxels, or 'exact' (default 4 * radius)")
    p.add_argument("--rtol", type=float, default=None, help="tolerance of the check, relative to the maximum")
    p.add_argument("--cluster", default=None, help="name of a running cluster (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="workers of the LocalCluster (default 2)")
    args = p.parse_args(argv)
    if args.size < 1 or args.chunks < 1 or args.chunks > args.size or args.iterations < 0:
        p.error("need size >= chunks >= 1 and iterations >= 0")

    import rdask

    r = args.psf_radius
    exact = 2 * args.iterations * r
    if args.halo is None:
        halo = 4 * r
    elif args.halo == "exact":
        halo = exact
    else:
        halo = int(args.halo)
    rtol = args.rtol if args.rtol is not None else (1e-9 if halo >= exact else 1e-3)

    psf = gaussian_psf(r, args.sigma)
    image = test_image(args.size, psf)
    print(
        f"image {args.size}^3, {args.chunks ** 3} chunks, {args.iterations} iterations, "
        f"PSF {2 * r + 1}^3 (sigma {args.sigma}), halo {halo} (exact from {exact})"
    )

    t = time.perf_counter()
    if args.cluster is not None:
        with rdask.Client(args.cluster) as client:
            chunked = run(client, image, psf, args.iterations, args.chunks, halo)
    else:
        with rdask.LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster:
            with rdask.Client(cluster) as client:
                t = time.perf_counter()
                chunked = run(client, image, psf, args.iterations, args.chunks, halo)
    t_cluster = time.perf_counter() - t

    t = time.perf_counter()
    whole = richardson_lucy(image, psf, args.iterations)
    t_whole = time.perf_counter() - t

    scale = float(np.abs(whole).max())
    diff = float(np.abs(chunked - whole).max())
    ok = bool(np.allclose(chunked, whole, rtol=0, atol=rtol * scale))
    print(f"rdask (chunked): {t_cluster:.3f} s; one process (whole): {t_whole:.3f} s")
    print(f"max |chunked - whole| = {diff:.3e} = {diff / scale:.3e} of the maximum (tolerance {rtol:g})")
    print("OK: the chunked result matches" if ok else "MISMATCH: the chunked result differs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

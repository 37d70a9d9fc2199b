"""The training log line (Megatron's fields plus throughput, MFU and memory) and TensorBoard scalars."""
import time

from megatron_vega import runtime


class TrainingLog:
    def __init__(self, total_iters: int, flops_per_token: float, world_size: int, peak_tflops: float | None,
                 tensorboard_dir: str | None, is_writer: bool):
        self.total_iters, self.flops_per_token = total_iters, flops_per_token
        self.world_size, self.peak_tflops = world_size, peak_tflops
        self.is_writer = is_writer
        self.writer = None
        if tensorboard_dir and is_writer:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir)
        self._start = time.perf_counter()
        self._window_tokens = 0
        self._first_iteration = None

    def step(self, tokens: int) -> None:
        self._window_tokens += tokens

    def line(self, iteration: int, consumed: int, lr: float, loss: float | None, grad_norm: float | None,
             loss_scale: float, skipped: int, extra: dict | None = None) -> str:
        """Format (and return) the log line for the window since the last call; record TensorBoard scalars."""
        now = time.perf_counter()
        elapsed, self._start = now - self._start, now
        tokens_per_s = self._window_tokens / max(elapsed, 1e-9)
        self._window_tokens = 0
        tflops = tokens_per_s * self.flops_per_token / self.world_size / 1e12
        if self._first_iteration is None:
            self._first_iteration, self._rate_start, self._rate_iter = iteration, now, iteration
        done = max(iteration - self._rate_iter, 1)
        # The rate is measured from the first logged iteration on (warm-up excluded): no ETA before a second line.
        eta = (now - self._rate_start) / done * (self.total_iters - iteration) if iteration > self._rate_iter else None
        fields = [f"iteration {iteration:>6d}/{self.total_iters}", f"consumed samples {consumed}",
                  f"lr {lr:.3e}", "loss " + ("n/a" if loss is None else f"{loss:.6f}"),
                  "grad norm " + ("n/a" if grad_norm is None else f"{grad_norm:.3f}"),
                  f"loss scale {loss_scale:g}", f"skipped {skipped}", f"tokens/s {tokens_per_s:,.0f}",
                  f"TFLOP/s/rank {tflops:.3f}"]
        if self.peak_tflops:
            fields.append(f"MFU {100 * tflops / self.peak_tflops:.1f}%")
        fields += [f"peak mem {runtime.peak_memory_bytes() / 2**30:.2f} GiB",
                   "ETA " + ("n/a" if eta is None else _duration(eta))]
        fields += [f"{k} {v:.6f}" for k, v in (extra or {}).items()]
        if self.writer is not None:
            scalars = {"lr": lr, "loss": loss, "grad-norm": grad_norm, "loss-scale": loss_scale,
                       "tokens-per-second": tokens_per_s, "tflops-per-rank": tflops, **(extra or {})}
            for name, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(name, value, iteration)
            self.writer.flush()
        return " | ".join(fields)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"

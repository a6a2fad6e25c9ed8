"""Progress of one study's cells: a tqdm bar on a terminal (cells done of total, rate, time left);
otherwise a plain line every 10 % of the cells or every 30 s, whichever comes first, so that CI logs
stay short."""
import sys
import time

#: a plain line at least this often (seconds) and at every this share of the cells
LINE_SECONDS = 30.0
LINE_SHARE = 0.1


class Progress:
    def __init__(self, title, total, stream=None):
        self.title, self.total, self.done = title, total, 0
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=title, unit="cell", file=self.stream,
                            dynamic_ncols=True)
        self.last_line_time, self.last_line_done = self.start, 0

    def advance(self, cells):
        self.done += cells
        if self.bar is not None:
            self.bar.update(cells)
            return
        now = time.monotonic()
        if (self.done == self.total
                or self.done - self.last_line_done >= LINE_SHARE * self.total
                or now - self.last_line_time >= LINE_SECONDS):
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else float("inf")
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"[{self.title}] {self.done}/{self.total} cells, {rate:.1f} cells/s, "
                  f"about {left:.0f} s left", file=self.stream, flush=True)
            self.last_line_time, self.last_line_done = now, self.done

    def close(self):
        if self.bar is not None:
            self.bar.close()

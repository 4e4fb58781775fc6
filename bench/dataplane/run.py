"""Run every data-plane benchmark in turn (one at a time: they share the CPU), then write the report."""

from . import bench_balancing, bench_batching, bench_overhead, bench_priority, bench_profile, report

if __name__ == "__main__":
    bench_profile.main()
    bench_overhead.main()
    bench_balancing.main()
    bench_batching.main()
    bench_priority.main()
    report.main()

"""Latency under load: MLPerf LoadGen scenarios with any engine of the registry as the system under test.

One concern per module, data flowing one way (options -> engine -> measurement -> rows -> report):

* ``settings``: the scenarios' options (``LoadGenSettings``), their defaults and how they
  differ from MLPerf's, and their validation (UserError, one sentence each);
* ``qsl``: the query sample library over the evaluation images, decoded before the test;
* ``sut``: the system under test, a dynamic batcher in front of one engine;
* ``runner``: one LoadGen test per scenario (and per offered QPS for Server), the Server
  scenario's search for the highest QPS whose p99 stays under the latency bound, and
  ``run_loadgen``, the one library function the CLI, nox and the tests go through;
* ``results``: LoadGen's own accounting (``mlperf_log_detail.txt``) as typed rows, and the
  ``loadgen_results.csv`` / ``loadgen_server_points.csv`` files;
* ``plots``: the latency-throughput curve and the Server scenario's best QPS per engine;
* ``command``: the ``densenet-opt loadgen`` subcommand.

``mlperf_loadgen`` (``pip install -e .[loadgen]``) is imported only when a test runs.
"""

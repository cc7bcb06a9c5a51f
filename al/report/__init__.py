"""The comparison report: read campaigns back from the tracking server, statistics, render."""

from al.report.compare import *
from al.report.compare import CompareError, parse_targets, run_compare

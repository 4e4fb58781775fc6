from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "agentscale.io_agentworkflows.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden"

"""
Warning filters that every rtunnel process needs, installed when ``rtunnel`` is imported.
"""

import warnings

# cryptography 51 deprecates DSA, and Conch 26.10's key module reads dsa.* names on every
# key it handles (twisted/conch/ssh/keys.py: isinstance(..., dsa.DSAPublicKey)), so every
# process that uses a key would print the warning although no DSA key is involved. Only
# that message, only from Conch, is silenced; rtunnel offers ssh-dss only when asked.
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=UserWarning, module=r"twisted\.conch\."
)

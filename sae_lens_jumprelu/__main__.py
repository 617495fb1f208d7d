from sae_lens_jumprelu.cli import main

raise SystemExit(main())

"""What `effscale scale` derives and shows."""
